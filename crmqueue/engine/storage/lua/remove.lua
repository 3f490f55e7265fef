-- ARGV: id, removable states joined by ','
local jk = job_key(ARGV[1])
local v = redis.call('HMGET', jk, 'state', 'queue')
if not v[1] or v[2] ~= KEYS[3] then return {'missing'} end
if not string.find(',' .. ARGV[2] .. ',', ',' .. v[1] .. ',', 1, true) then return {v[1]} end
local all = redis.call('HGETALL', jk)
redis.call('ZREM', queue_key(v[1]), ARGV[1])
redis.call('DEL', jk)
return {'ok', all}
