-- ARGV: max_stalls, stalled_error_json
local now = now_seconds()
local expired = redis.call('ZRANGEBYSCORE', queue_key('active'), '-inf', now, 'LIMIT', 0, 500)
for _, id in ipairs(expired) do
  local jk = job_key(id)
  redis.call('ZREM', queue_key('active'), id)
  local stalls = redis.call('HINCRBY', jk, 'stalls', 1)
  redis.call('HDEL', jk, 'lease_until', 'lease_token')
  if stalls > tonumber(ARGV[1]) then
    redis.call('HSET', jk, 'state', 'dead', 'finished_at', now,
      'errors', append_error(jk, ARGV[2]))
    redis.call('ZADD', queue_key('dead'), now, id)
    bump_stats('failed', now)
    redis.call('HINCRBY', queue_key('totals'), 'dead', 1)
  else
    local priority = tonumber(redis.call('HGET', jk, 'priority') or '0')
    redis.call('HINCRBY', jk, 'attempts', -1)
    redis.call('HSET', jk, 'state', 'waiting')
    redis.call('ZADD', queue_key('waiting'), waiting_score(priority, 0), id)
  end
  emit_stalled(id, jk)
end
if #expired > 0 then redis.call('LPUSH', queue_key('wake'), '1') end
if #expired > 0 then redis.call('HINCRBY', queue_key('totals'), 'stalled', #expired) end
return expired
