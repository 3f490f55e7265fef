-- ARGV: keep_seconds, job count, then id, token, result_json for each job, then key,
-- value, ttl_ms ('0' = none) for each record kept with the completions
local now = now_seconds()
local keep = tonumber(ARGV[1])
local jobs_end = 2 + tonumber(ARGV[2]) * 3
local out = {}
for i = jobs_end + 1, #ARGV, 3 do
  if ARGV[i + 2] == '0' then
    redis.call('SET', ARGV[i], ARGV[i + 1], 'NX')
  else
    redis.call('SET', ARGV[i], ARGV[i + 1], 'PX', ARGV[i + 2], 'NX')
  end
end
for i = 3, jobs_end, 3 do
  local id = ARGV[i]
  local jk = job_key(id)
  if owned(jk, ARGV[i + 1]) then
    redis.call('ZREM', queue_key('active'), id)
    if keep > 0 then
      redis.call('HSET', jk, 'state', 'completed', 'progress', 100, 'finished_at', now,
        'result', ARGV[i + 2])
      redis.call('HDEL', jk, 'lease_until', 'lease_token')
      redis.call('ZADD', queue_key('completed'), now, id)
    else
      redis.call('DEL', jk)
    end
    bump_stats('completed', now)
    table.insert(out, 1)
  else
    table.insert(out, 0)
  end
end
return out
