-- wrk script: every POST /webhook/appointments body is unique (thread id, counter, random).
local counter = 0
local thread_id = 0

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"event_type":"appointment.scheduled","appointment_id":"W%s-%d-%d","patient_id":"P","timestamp":"2025-01-10T12:30:00Z"}',
    tostring(tid), counter, math.random(1, 1000000000))
  return wrk.format("POST", "/webhook/appointments", {["Content-Type"] = "application/json"}, body)
end
