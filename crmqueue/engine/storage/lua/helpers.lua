-- Shared by every script: RedisJobStore runs each script as this file, then the
-- script's own file, after a line defining MAX_ERRORS_KEPT (from Python).
-- KEYS[1] = queue key prefix, KEYS[2] = job key prefix, KEYS[3] = queue name.
local function now_seconds()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function queue_key(name) return KEYS[1] .. name end
local function job_key(id) return KEYS[2] .. id end
local function waiting_score(priority, seq) return (1000 - priority) * 1099511627776 + seq end
local function bump_stats(field, now)
  local key = queue_key('stats:' .. math.floor(now / 60))
  redis.call('HINCRBY', key, field, 1)
  redis.call('EXPIRE', key, 90000)
end
local function owned(jk, token)
  local v = redis.call('HMGET', jk, 'state', 'lease_token')
  return v[1] == 'active' and v[2] == token
end
local function append_error(jk, error_json)
  local errors = cjson.decode(redis.call('HGET', jk, 'errors') or '[]')
  table.insert(errors, cjson.decode(error_json))
  while #errors > MAX_ERRORS_KEPT do table.remove(errors, 1) end
  return cjson.encode(errors)
end
