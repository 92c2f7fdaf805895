//! Properties of the generated CRDs that `kubectl explain` and Argo CD rely on.

use countersign_crds::all_crds;
use serde_json::Value;

fn undocumented(path: &str, schema: &Value, out: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let here = format!("{path}.{name}");
            let documented = prop
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            if !documented && !["apiVersion", "kind", "metadata"].contains(&name.as_str()) {
                out.push(here.clone());
            }
            undocumented(&here, prop, out);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(inner) = schema.get(key) {
            undocumented(&format!("{path}[]"), inner, out);
        }
    }
}

fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    serde_json::to_value(&crd.spec.versions[0].schema).expect("schema serialises")["openAPIV3Schema"].clone()
}

#[test]
fn every_field_of_every_kind_has_a_description() {
    let mut missing = Vec::new();
    for crd in all_crds() {
        undocumented(&crd.spec.names.kind, &schema_of(&crd), &mut missing);
    }
    assert!(missing.is_empty(), "fields without a doc comment: {missing:#?}");
}

#[test]
fn every_kind_has_status_short_names_and_the_shared_printer_columns() {
    let crds = all_crds();
    assert_eq!(crds.len(), 7);
    for crd in crds {
        let kind = &crd.spec.names.kind;
        assert_eq!(crd.spec.group, countersign_crds::GROUP);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, countersign_crds::VERSION);
        assert!(
            version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{kind}: status subresource"
        );
        assert!(
            crd.spec.names.short_names.as_ref().is_some_and(|s| !s.is_empty()),
            "{kind}: short name"
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        for needed in ["Ready", "Age", "Message"] {
            assert!(
                columns.contains(&needed),
                "{kind}: printer column {needed} in {columns:?}"
            );
        }
        let message = version
            .additional_printer_columns
            .iter()
            .flatten()
            .find(|c| c.name == "Message");
        assert_eq!(
            message.and_then(|c| c.priority),
            Some(1),
            "{kind}: Message only at -o wide"
        );
        let conditions = &schema_of(&crd)["properties"]["status"]["properties"]["conditions"];
        assert_eq!(
            conditions["x-kubernetes-list-type"], "map",
            "{kind}: conditions keyed by type"
        );
        assert_eq!(conditions["x-kubernetes-list-map-keys"], serde_json::json!(["type"]));
    }
}

#[test]
fn kinds_that_can_need_approval_show_an_approval_column() {
    for crd in all_crds().into_iter().filter(|c| c.spec.names.kind != "ApprovalPolicy") {
        let columns: Vec<_> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        assert!(
            columns.iter().any(|c| c == "Approval"),
            "{}: {columns:?}",
            crd.spec.names.kind
        );
    }
}
