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
  redis.call('HINCRBY', queue_key('totals'), field, 1)
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
-- Job events: one stream entry per transition, added by the script that makes it.
-- EVENTS_KEY and EVENTS_MAXLEN (0 = no events) come first in every script's source (see
-- RedisJobStore); fields as contract.EVENT_FIELDS, the time being the entry's id.
local function emit(kind, id, state, name, tenant, progress, attempt, consumer, err)
  redis.call('XADD', EVENTS_KEY, 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'type', kind, 'id', id,
    'queue', KEYS[3], 'name', name or '', 'tenant', tenant or '', 'state', state,
    'progress', progress or 0, 'attempt', attempt or 0, 'consumer', consumer or '',
    'error', err or '')
end
-- An event of a stored job, from its hash (state nil: the hash's; progress to override).
local function emit_job(kind, id, jk, state, err, progress)
  if EVENTS_MAXLEN > 0 then
    local v = redis.call('HMGET', jk, 'name', 'tenant', 'progress', 'attempts', 'consumer',
      'state')
    emit(kind, id, state or v[6], v[1], v[2], progress or v[3], v[4], v[5], err)
  end
end
local function error_summary(error_json)
  local ok, e = pcall(cjson.decode, error_json)
  if not ok or type(e) ~= 'table' then return '' end
  return string.sub(tostring(e['type'] or '') .. ': ' .. tostring(e['message'] or ''), 1, 300)
end
-- A failed attempt: 'failed', then 'retrying' (to delayed) or 'dead'.
local function emit_failed(id, jk, state, error_json)
  if EVENTS_MAXLEN > 0 then
    local summary = error_summary(error_json)
    emit_job('failed', id, jk, state, summary)
    emit_job(state == 'dead' and 'dead' or 'retrying', id, jk, state, summary)
  end
end
-- An expired lease: 'stalled' (back to waiting, or dead), then 'dead' if so.
local function emit_stalled(id, jk)
  if EVENTS_MAXLEN > 0 then
    local stalled = 'Stalled: lease expired (its consumer stopped renewing it)'
    emit_job('stalled', id, jk, nil, stalled)
    if redis.call('HGET', jk, 'state') == 'dead' then emit_job('dead', id, jk, 'dead', stalled) end
  end
end
