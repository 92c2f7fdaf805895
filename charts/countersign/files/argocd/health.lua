-- Argo CD health check for every Countersign kind (platform.countersign.dev).
-- Argo CD sets the global `obj` to the resource; the script returns `hs` with
-- `status` (Healthy, Progressing, Degraded, Suspended) and `message`.
--
-- Lua 5.1 as gopher-lua runs it. Argo CD opens only the base, package, table
-- and a safe os library for argocd-cm scripts (no `string`), so this script
-- uses no string functions or methods: only `..`, `tostring` and comparisons.
--
-- Every Countersign status has observedGeneration and kstatus-style
-- conditions Ready, Synced, Approved, Reconciling and Stalled. The CRDs
-- default status to {observedGeneration: -1}, so an object the operator has
-- not looked at yet reads as not observed.

local hs = {}
local status = obj.status
local generation = obj.metadata.generation

-- The condition of a type, or nil.
local function condition(type)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

-- "Reason: message" of a condition, or the fallback when it is absent.
local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason or c.status or ""
  if c.message == nil or c.message == "" then
    return reason
  end
  return reason .. ": " .. c.message
end

local function result(state, message)
  hs.status = state
  hs.message = message
  return hs
end

local ready = condition("Ready")
local stalled = condition("Stalled")
local approved = condition("Approved")
local reconciling = condition("Reconciling")
local isStalled = stalled ~= nil and stalled.status == "True"
local awaiting = approved ~= nil and approved.status == "False" and approved.reason == "AwaitingApproval"

-- What a second person is asked to approve: the digest shown in status.pendingDigest.
local function awaitingMessage(what)
  local digest = "(not shown yet)"
  if status ~= nil and status.pendingDigest ~= nil then
    digest = tostring(status.pendingDigest)
  end
  return what .. " awaits a second person's approval of digest " .. digest .. ": " .. (approved.message or "")
end

-- Deletion. The finalizer holds the object until the row is gone; a deletion
-- the operator refuses until something else changes (Stalled, e.g. InUse:
-- mappings still use an identity provider) needs a person, so it is Degraded,
-- and one waiting for a second person's approval is Suspended. Note: Argo CD
-- itself reports any object with a deletionTimestamp as Progressing "Pending
-- deletion" without running this script; these branches serve other callers.
if obj.metadata.deletionTimestamp ~= nil then
  if isStalled then
    return result("Degraded", "deletion held: " .. describe(stalled, "Stalled"))
  end
  if awaiting then
    return result("Suspended", awaitingMessage("the deletion"))
  end
  return result("Progressing", "being deleted: " .. describe(ready, "no Ready condition"))
end

-- Not observed yet: no status, the CRD's default -1, or an older generation.
local observed = nil
if status ~= nil then
  observed = status.observedGeneration
end
if observed == nil or observed < 0 then
  return result("Progressing", "waiting for the operator's first reconcile")
end
if generation ~= nil and observed < generation then
  return result("Progressing", "the operator has observed generation " .. tostring(observed) ..
    ", not yet generation " .. tostring(generation))
end
if generation ~= nil and ready ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
  return result("Progressing", "Ready describes generation " .. tostring(ready.observedGeneration) ..
    ", not yet generation " .. tostring(generation))
end

-- Needs a spec change (or a person): invalid, conflicting, rejected, in use,
-- or a database error a person must fix (a missing privilege, a constraint,
-- the schema).
if isStalled then
  return result("Degraded", describe(stalled, "Stalled"))
end

-- The two-person rule holds the change.
if awaiting then
  return result("Suspended", awaitingMessage("the change"))
end

if reconciling ~= nil and reconciling.status == "True" then
  return result("Progressing", describe(reconciling, "Reconciling"))
end
if ready ~= nil and ready.status == "True" then
  return result("Healthy", ready.message or "")
end
return result("Progressing", describe(ready, "no Ready condition yet"))
