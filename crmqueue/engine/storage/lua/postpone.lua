-- ARGV: id, token, reason, delay. Not an attempt: the attempt count goes back and no
-- failure is counted; the reason is noted as contract.postponed_errors does.
local jk = job_key(ARGV[1])
if not owned(jk, ARGV[2]) then return 0 end
local now = now_seconds()
redis.call('ZREM', queue_key('active'), ARGV[1])
local errors = cjson.decode(redis.call('HGET', jk, 'errors') or '[]')
local count = 1
local last = errors[#errors]
if last and last['type'] == 'Postponed' then
  count = (tonumber(last['count']) or 1) + 1
  table.remove(errors)
end
table.insert(errors, {type = 'Postponed', message = ARGV[3], traceback = '', at = now,
  count = count})
while #errors > MAX_ERRORS_KEPT do table.remove(errors, 1) end
local run_at = now + tonumber(ARGV[4])
redis.call('HINCRBY', jk, 'attempts', -1)
redis.call('HDEL', jk, 'lease_until', 'lease_token')
redis.call('HSET', jk, 'state', 'delayed', 'run_at', run_at, 'errors', cjson.encode(errors))
redis.call('ZADD', queue_key('delayed'), run_at, ARGV[1])
emit_job('postponed', ARGV[1], jk, 'delayed', string.sub(ARGV[3], 1, 300))
-- wake an idle consumer so that it waits for this due time, not its full poll timeout
redis.call('LPUSH', queue_key('wake'), '1')
redis.call('LTRIM', queue_key('wake'), 0, 63)
return 1
