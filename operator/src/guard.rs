//! Checks that the admission guard of the two-person rule is installed as
//! shipped (ADR 0004): the operator trusts only what the API server
//! enforced, so an approval is honoured only while this holds.

use countersign_reconcilers::approval::Guard;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;

/// Compares every object of the shipped approval guard with the installed one.
pub async fn check(client: &Client) -> Guard {
    match check_all(client).await {
        Ok(()) => Guard::Intact,
        Err(why) => Guard::Broken(why),
    }
}

async fn check_all(client: &Client) -> Result<(), String> {
    let shipped = shipped_objects().map_err(|e| format!("cannot read the embedded guard: {e}"))?;
    for want in shipped {
        let kind = want["kind"].as_str().unwrap_or_default().to_string();
        let name = want["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let (group, version) = want["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .split_once('/')
            .unwrap_or_default();
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &kind));
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let installed = match api.get_opt(&name).await {
            Ok(Some(obj)) => obj,
            Ok(None) => return Err(format!("{kind} {name} is not installed")),
            Err(e) => return Err(format!("cannot read {kind} {name}: {e}")),
        };
        let have = installed.data.get("spec").cloned().unwrap_or(Value::Null);
        if let Some(path) = first_difference("spec", &want["spec"], &have) {
            return Err(format!("{kind} {name} differs from the shipped copy at {path}"));
        }
    }
    Ok(())
}

fn shipped_objects() -> Result<Vec<Value>, serde_norway::Error> {
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(countersign_crds::admission::APPROVAL_GUARD_YAML) {
        let value: Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// Where `have` departs from `want`. Fields the API server fills in by itself
/// may appear in `have` only with their default (empty) values, so an added
/// matchCondition, selector or Warn action is a difference.
pub fn first_difference(path: &str, want: &Value, have: &Value) -> Option<String> {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            for (k, wv) in w {
                let hv = h.get(k).unwrap_or(&Value::Null);
                if let Some(p) = first_difference(&format!("{path}.{k}"), wv, hv) {
                    return Some(p);
                }
            }
            h.iter()
                .filter(|(k, _)| !w.contains_key(*k))
                .find(|(_, v)| !is_server_default(v))
                .map(|(k, _)| format!("{path}.{k}"))
        }
        (Value::Array(w), Value::Array(h)) => {
            if w.len() != h.len() {
                return Some(format!("{path} (length {} instead of {})", h.len(), w.len()));
            }
            w.iter()
                .zip(h)
                .enumerate()
                .find_map(|(i, (wv, hv))| first_difference(&format!("{path}[{i}]"), wv, hv))
        }
        (w, h) if w == h => None,
        _ => Some(path.to_string()),
    }
}

/// Values the API server defaults into an admission policy we ship without them.
fn is_server_default(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => matches!(s.as_str(), "Equivalent" | "*"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_defaults_pass_and_tampering_is_named() {
        let want = json!({"validationActions": ["Deny"], "policyName": "p", "rules": [{"ops": ["CREATE"]}]});
        let defaulted = json!({"validationActions": ["Deny"], "policyName": "p", "matchPolicy": "Equivalent",
            "namespaceSelector": {}, "rules": [{"ops": ["CREATE"], "scope": "*"}]});
        assert_eq!(first_difference("spec", &want, &defaulted), None);
        let warn = json!({"validationActions": ["Warn"], "policyName": "p", "rules": [{"ops": ["CREATE"]}]});
        assert_eq!(
            first_difference("spec", &want, &warn).as_deref(),
            Some("spec.validationActions[0]")
        );
        let exempted = json!({"validationActions": ["Deny"], "policyName": "p", "rules": [{"ops": ["CREATE"]}],
            "matchConditions": [{"name": "not-mallory", "expression": "request.userInfo.username != 'mallory'"}]});
        assert_eq!(
            first_difference("spec", &want, &exempted).as_deref(),
            Some("spec.matchConditions")
        );
        let fewer = json!({"validationActions": ["Deny"], "policyName": "p", "rules": []});
        assert!(first_difference("spec", &want, &fewer).is_some());
    }

    #[test]
    fn the_shipped_guard_parses() {
        let objects = shipped_objects().expect("embedded YAML parses");
        assert_eq!(objects.len(), 8);
    }
}
