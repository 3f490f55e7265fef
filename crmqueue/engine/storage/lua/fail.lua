-- ARGV: id, token, error_json, retry_delay ('' = dead)
local jk = job_key(ARGV[1])
if not owned(jk, ARGV[2]) then return false end
local now = now_seconds()
redis.call('ZREM', queue_key('active'), ARGV[1])
local errors = append_error(jk, ARGV[3])
redis.call('HDEL', jk, 'lease_until', 'lease_token')
local state
if ARGV[4] == '' then
  state = 'dead'
  redis.call('HSET', jk, 'state', state, 'finished_at', now, 'errors', errors)
  redis.call('ZADD', queue_key('dead'), now, ARGV[1])
else
  state = 'delayed'
  local run_at = now + tonumber(ARGV[4])
  redis.call('HSET', jk, 'state', state, 'run_at', run_at, 'errors', errors)
  redis.call('ZADD', queue_key('delayed'), run_at, ARGV[1])
  -- wake an idle consumer so that it waits for this due time, not its full poll timeout
  redis.call('LPUSH', queue_key('wake'), '1')
  redis.call('LTRIM', queue_key('wake'), 0, 63)
end
emit_failed(ARGV[1], jk, state, ARGV[3])
bump_stats('failed', now)
redis.call('HINCRBY', queue_key('totals'), state == 'dead' and 'dead' or 'retried', 1)
return state
