-- ARGV: id, token, lease_seconds, progress ('' = unchanged)
local jk = job_key(ARGV[1])
if not owned(jk, ARGV[2]) then return 0 end
local lease_until = now_seconds() + tonumber(ARGV[3])
redis.call('HSET', jk, 'lease_until', lease_until)
if ARGV[4] ~= '' then redis.call('HSET', jk, 'progress', ARGV[4]) end
if ARGV[4] ~= '' then emit_job('progress', ARGV[1], jk, 'active') end
redis.call('ZADD', queue_key('active'), lease_until, ARGV[1])
return 1
