-- ARGV: id, token
local jk = job_key(ARGV[1])
if not owned(jk, ARGV[2]) then return 0 end
redis.call('ZREM', queue_key('active'), ARGV[1])
local priority = tonumber(redis.call('HGET', jk, 'priority'))
redis.call('HINCRBY', jk, 'attempts', -1)
redis.call('HSET', jk, 'state', 'waiting')
redis.call('HDEL', jk, 'lease_until', 'lease_token')
redis.call('ZADD', queue_key('waiting'), waiting_score(priority, 0), ARGV[1])
emit_job('released', ARGV[1], jk, 'waiting')
redis.call('LPUSH', queue_key('wake'), '1')
redis.call('LTRIM', queue_key('wake'), 0, 63)
return 1
