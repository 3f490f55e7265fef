-- ARGV: consumer, lease_seconds, limit
local now = now_seconds()
for _, set in ipairs({'scheduled', 'delayed'}) do
  local due = redis.call('ZRANGEBYSCORE', queue_key(set), '-inf', now, 'LIMIT', 0, 200)
  for _, id in ipairs(due) do
    redis.call('ZREM', queue_key(set), id)
    local jk = job_key(id)
    local priority = tonumber(redis.call('HGET', jk, 'priority') or '0')
    local seq = redis.call('INCR', queue_key('seq'))
    redis.call('ZADD', queue_key('waiting'), waiting_score(priority, seq), id)
    redis.call('HSET', jk, 'state', 'waiting')
  end
end
local popped = redis.call('ZPOPMIN', queue_key('waiting'), tonumber(ARGV[3]))
local out = {}
local lease_until = now + tonumber(ARGV[2])
for i = 1, #popped, 2 do
  local id = popped[i]
  local jk = job_key(id)
  local attempts = redis.call('HINCRBY', jk, 'attempts', 1)
  local first_run = 1 - redis.call('HEXISTS', jk, 'started_at')
  local token = ARGV[1] .. '#' .. redis.call('INCR', queue_key('lease-seq'))
  redis.call('HSET', jk, 'state', 'active', 'started_at', now, 'lease_until', lease_until,
    'consumer', ARGV[1], 'lease_token', token)
  redis.call('ZADD', queue_key('active'), lease_until, id)
  local v = redis.call('HMGET', jk, 'name', 'message', 'max_attempts')
  table.insert(out, {id, v[1] or '', v[2] or '', attempts, tonumber(v[3] or '1'), token,
    first_run})
end
if #out == 0 then
  local next_due = nil
  for _, set in ipairs({'scheduled', 'delayed'}) do
    local first = redis.call('ZRANGE', queue_key(set), 0, 0, 'WITHSCORES')
    if #first > 0 and (next_due == nil or tonumber(first[2]) < next_due) then
      next_due = tonumber(first[2])
    end
  end
  if next_due then return {{}, tostring(next_due)} end
end
return {out, false}
