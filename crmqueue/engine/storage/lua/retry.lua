-- ARGV: id, max_attempts
local jk = job_key(ARGV[1])
local v = redis.call('HMGET', jk, 'state', 'queue', 'priority')
if not v[1] or v[2] ~= KEYS[3] then return 'missing' end
if v[1] ~= 'dead' then return v[1] end
redis.call('ZREM', queue_key('dead'), ARGV[1])
local seq = redis.call('INCR', queue_key('seq'))
redis.call('HSET', jk, 'state', 'waiting', 'attempts', 0, 'stalls', 0, 'progress', 0,
  'max_attempts', ARGV[2])
redis.call('HDEL', jk, 'finished_at')
redis.call('ZADD', queue_key('waiting'), waiting_score(tonumber(v[3]), seq), ARGV[1])
emit_job('replayed', ARGV[1], jk, 'waiting')
redis.call('LPUSH', queue_key('wake'), '1')
return 'ok'
