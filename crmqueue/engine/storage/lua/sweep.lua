-- ARGV: state, cutoff, batch
local ids = redis.call('ZRANGEBYSCORE', queue_key(ARGV[1]), '-inf', ARGV[2], 'LIMIT', 0,
  tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('DEL', job_key(id))
  redis.call('ZREM', queue_key(ARGV[1]), id)
end
return #ids
