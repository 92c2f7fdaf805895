//! The delivery path: the Helm chart and the kustomize base, checked with
//! the real `helm` (built from its Go module) and applied to the real API
//! server; the operator run under the chart's ServiceAccount with a token
//! from the TokenRequest API; and what that identity may not do.

mod common;

use anyhow::{Context as _, anyhow, bail, ensure};
use countersign_crds::Tenant;
use countersign_e2e::unique_name;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The release namespace every check uses, as the README's install does.
const NAMESPACE: &str = "countersign-system";
/// The operator's identity as the API server sees a pod of the chart.
const OPERATOR: &str = "system:serviceaccount:countersign-system:countersign";

fn chart() -> String {
    common::repo_root().join("charts/countersign").display().to_string()
}

/// A path as a command-line argument.
fn arg(path: &std::path::Path) -> String {
    path.display().to_string()
}

/// Where build.sh put helm and kubectl (the harness's control-plane binaries).
fn tool(name: &str) -> PathBuf {
    countersign_e2e::tools_dir()
        .expect("e2e/controlplane/build.sh")
        .join(name)
}

/// Runs a tool; Ok(stdout) on success, Err(stderr) otherwise.
fn run(name: &str, args: &[&str], kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Result<String, String>> {
    let mut cmd = Command::new(tool(name));
    cmd.args(args);
    if let Some(path) = kubeconfig {
        cmd.env("KUBECONFIG", path);
    }
    // Helm keeps its caches out of the user's home.
    let home = std::env::temp_dir().join("countersign-e2e-helm");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    let out = cmd.output().with_context(|| format!("run {name} {args:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    Ok(if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stderr}{stdout}"))
    })
}

fn must(name: &str, args: &[&str], kubeconfig: Option<&std::path::Path>) -> anyhow::Result<String> {
    run(name, args, kubeconfig)?.map_err(|e| anyhow!("{name} {args:?} failed:\n{e}"))
}

/// `helm template` of the chart with extra arguments, as parsed objects.
fn render(extra: &[&str]) -> anyhow::Result<Vec<Value>> {
    let chart = chart();
    let mut args = vec!["template", "countersign", chart.as_str(), "--namespace", NAMESPACE];
    args.extend_from_slice(extra);
    parse(&must("helm", &args, None)?)
}

fn parse(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(doc)?;
        if value.is_object() {
            out.push(value);
        }
    }
    Ok(out)
}

/// kind/name (namespace/name for namespaced objects).
fn key(obj: &Value) -> String {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn by_key(objs: &[Value]) -> BTreeMap<String, Value> {
    objs.iter().map(|o| (key(o), o.clone())).collect()
}

/// What an object declares, without the labels and annotations each tool
/// adds for itself: the spec, RBAC rules and bindings, data.
fn declared(obj: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for field in ["spec", "rules", "roleRef", "subjects", "data"] {
        if let Some(v) = obj.get(field) {
            out.insert(field.into(), v.clone());
        }
    }
    Value::Object(out)
}

/// The objects the chart's default values render, by kind and name.
const DEFAULT_OBJECTS: &[&str] = &[
    "ClusterRole countersign-approver",
    "ClusterRole countersign-editor",
    "ClusterRole countersign-operator",
    "ClusterRole countersign-policy-admin",
    "ClusterRoleBinding countersign-operator",
    "CustomResourceDefinition approvalpolicies.platform.countersign.dev",
    "CustomResourceDefinition frontinglinks.platform.countersign.dev",
    "CustomResourceDefinition groupmappings.platform.countersign.dev",
    "CustomResourceDefinition identityproviders.platform.countersign.dev",
    "CustomResourceDefinition licensegrants.platform.countersign.dev",
    "CustomResourceDefinition tenants.platform.countersign.dev",
    "CustomResourceDefinition webhooksubscriptions.platform.countersign.dev",
    "Deployment countersign-system/countersign",
    "Job countersign-system/countersign-migrate",
    "MutatingAdmissionPolicy countersign-stamp-declarer",
    "MutatingAdmissionPolicy countersign-stamp-requester",
    "MutatingAdmissionPolicyBinding countersign-stamp-declarer",
    "MutatingAdmissionPolicyBinding countersign-stamp-requester",
    "PodDisruptionBudget countersign-system/countersign",
    "Role countersign-system/countersign-operator",
    "RoleBinding countersign-system/countersign-operator",
    "Service countersign-system/countersign",
    "ServiceAccount countersign-system/countersign",
    "ValidatingAdmissionPolicy countersign-approval-guard",
    "ValidatingAdmissionPolicy countersign-requester-guard",
    "ValidatingAdmissionPolicyBinding countersign-approval-guard",
    "ValidatingAdmissionPolicyBinding countersign-requester-guard",
];

#[test]
fn the_chart_lints_and_renders_its_defaults_and_every_values_example() -> anyhow::Result<()> {
    let chart = chart();
    let chart = chart.as_str();
    must("helm", &["lint", "--strict", chart], None)?;
    let defaults = render(&[])?;
    let keys: Vec<String> = by_key(&defaults).into_keys().collect();
    assert_eq!(keys, DEFAULT_OBJECTS, "the chart's default objects");
    let deployment = &by_key(&defaults)["Deployment countersign-system/countersign"];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .context("the operator's args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "run",
        "--leader-elect",
        "--encryption-key-secret=countersign-system/countersign-encryption-key",
    ] {
        assert!(args.contains(&want), "{want} missing from {args:?}");
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["requests"].is_object());
    let crd = &by_key(&defaults)["CustomResourceDefinition tenants.platform.countersign.dev"];
    assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
    let job = &by_key(&defaults)["Job countersign-system/countersign-migrate"];
    assert_eq!(
        job["metadata"]["annotations"]["helm.sh/hook"],
        "pre-install,pre-upgrade"
    );
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(["migrate"])
    );

    let mut examples: Vec<PathBuf> = std::fs::read_dir(common::repo_root().join("charts/countersign/ci"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    examples.sort();
    ensure!(examples.len() >= 3, "the documented values examples are missing");
    for example in &examples {
        let file = arg(example);
        let file = file.as_str();
        must("helm", &["lint", "--strict", chart, "-f", file], None)?;
        let objects = by_key(&render(&["-f", file])?);
        match example.file_name().and_then(|n| n.to_str()).unwrap_or_default() {
            "production-values.yaml" => {
                let d = &objects["Deployment countersign-system/countersign"];
                assert_eq!(d["spec"]["replicas"], 3);
                assert!(
                    d["spec"]["template"]["spec"]["containers"][0]["image"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("@sha256:")
                );
                let args = d["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
                for want in [
                    "--platform-tenant=platform",
                    "--username-prefix=oidc:",
                    "--outbound-allow-host=*.okta.com",
                    "--outbound-ca-file=/etc/countersign/ca/0/ca.crt",
                    "--license-keyring=countersign-system/countersign-license-keyring",
                    "--license-operator=Acme Corporation",
                ] {
                    assert!(args.contains(want), "{want} missing from {args}");
                }
                for present in [
                    "ServiceMonitor countersign-system/countersign",
                    "NetworkPolicy countersign-system/countersign",
                    "ConfigMap countersign-system/countersign-argocd-cm-snippet",
                ] {
                    assert!(objects.contains_key(present), "{present} not rendered");
                }
                let snippet = &objects["ConfigMap countersign-system/countersign-argocd-cm-snippet"]["data"];
                for kind in [
                    "Tenant",
                    "ApprovalPolicy",
                    "IdentityProvider",
                    "GroupMapping",
                    "WebhookSubscription",
                    "FrontingLink",
                    "LicenseGrant",
                ] {
                    let script = snippet[format!("resource.customizations.health.platform.countersign.dev_{kind}")]
                        .as_str()
                        .unwrap_or_default();
                    assert!(script.contains("hs"), "no health script for {kind}");
                }
            }
            "dev-values.yaml" => {
                let d = &objects["Deployment countersign-system/countersign"];
                assert_eq!(d["spec"]["replicas"], 1);
                assert!(!d.to_string().contains("--leader-elect"));
                assert!(!objects.contains_key("PodDisruptionBudget countersign-system/countersign"));
                let crd = &objects["CustomResourceDefinition tenants.platform.countersign.dev"];
                assert!(crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null());
            }
            "bring-your-own-crds-values.yaml" => {
                assert!(!objects.keys().any(|k| k.starts_with("CustomResourceDefinition")));
                assert!(!objects.contains_key("ClusterRole countersign-approver"));
                assert!(!objects.contains_key("Job countersign-system/countersign-migrate"));
                // The admission guard is not optional: without it no approval counts.
                assert!(objects.contains_key("ValidatingAdmissionPolicy countersign-approval-guard"));
            }
            other => bail!("values example {other} has no expectations here"),
        }
    }
    Ok(())
}

#[test]
fn wrong_values_are_refused_with_a_message_naming_the_value() -> anyhow::Result<()> {
    let chart = chart();
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "replicas=-1"], "at '/replicas': minimum: got -1, want 0"),
        (
            &["--set", "logFormat=xml"],
            "at '/logFormat': value must be one of 'json', 'text'",
        ),
        (&["--set", "replica=2"], "additional properties 'replica' not allowed"),
        (&["--set", "image.digest=latest"], "at '/image/digest'"),
        (
            &["--set", "leaderElection.leaseDurationSeconds=1"],
            "at '/leaderElection/leaseDurationSeconds'",
        ),
        (
            &["--set", "outbound.allowHosts={https://idp.example}"],
            "at '/outbound/allowHosts/0'",
        ),
        (
            &["--set", "database.secretName=Not_A_Name"],
            "at '/database/secretName'",
        ),
        (&["--set", "resyncSeconds=fast"], "at '/resyncSeconds'"),
        (
            &["--set", "serviceMonitor.interval=often"],
            "at '/serviceMonitor/interval'",
        ),
        (
            &["--set", "outbound.caBundles[0].configMap=ca"],
            "at '/outbound/caBundles/0': missing property 'key'",
        ),
        (
            &["--set", "leaderElection.enabled=false"],
            "replicas > 1 needs leaderElection.enabled=true",
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["template", "countersign", chart.as_str()];
        all.extend_from_slice(args);
        match run("helm", &all, None)? {
            Ok(_) => bail!("helm rendered the chart with {args:?}"),
            Err(e) => assert!(e.contains(message), "{args:?}: wanted {message:?} in:\n{e}"),
        }
    }
    Ok(())
}

#[test]
fn the_kustomize_base_declares_what_the_chart_declares_by_default() -> anyhow::Result<()> {
    let base = common::repo_root().join("kustomize/base");
    let kustomized = by_key(&parse(&must("kubectl", &["kustomize", &arg(&base)], None)?)?);
    let chart = by_key(&render(&[])?);
    let mut only_kustomize: Vec<&String> = kustomized.keys().filter(|k| !chart.contains_key(*k)).collect();
    // `helm install --create-namespace` makes the namespace on the chart's path.
    only_kustomize.retain(|k| *k != "Namespace countersign-system");
    let only_chart: Vec<&String> = chart.keys().filter(|k| !kustomized.contains_key(*k)).collect();
    assert!(
        only_kustomize.is_empty() && only_chart.is_empty(),
        "the kustomize base and the chart drifted apart: only in kustomize {only_kustomize:?}, only in the chart {only_chart:?}"
    );
    for (k, obj) in &chart {
        assert_eq!(
            declared(&kustomized[k]),
            declared(obj),
            "{k} differs between the kustomize base and the chart"
        );
    }
    // The operator honours approvals only while the installed admission
    // objects equal the copy built into it, as its YAML parser reads it:
    // both install paths must install exactly that (a folded CEL expression
    // that two YAML libraries read differently would disable every approval).
    let shipped = by_key(&parse(countersign_crds::admission::APPROVAL_GUARD_YAML)?);
    ensure!(shipped.len() == 8, "the shipped guard has {} objects", shipped.len());
    for (k, obj) in &shipped {
        assert_eq!(
            declared(&chart[k]),
            declared(obj),
            "the chart renders {k} unlike the operator's copy"
        );
        assert_eq!(
            declared(&kustomized[k]),
            declared(obj),
            "kustomize renders {k} unlike the operator's copy"
        );
    }
    for overlay in ["dev", "production"] {
        let path = common::repo_root().join("kustomize/overlays").join(overlay);
        let objects = by_key(&parse(&must("kubectl", &["kustomize", &arg(&path)], None)?)?);
        let deployment = &objects["Deployment countersign-system/countersign"];
        let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        match overlay {
            "dev" => {
                assert_eq!(deployment["spec"]["replicas"], 1);
                assert!(
                    !args.contains("--leader-elect") && !args.contains("--lease-name"),
                    "{args}"
                );
                assert!(args.contains("--outbound-allow-loopback"), "{args}");
                assert!(!objects.contains_key("PodDisruptionBudget countersign-system/countersign"));
            }
            _ => {
                assert_eq!(deployment["spec"]["replicas"], 3);
                assert!(args.contains("--leader-elect"), "{args}");
                assert!(objects.contains_key("ServiceMonitor countersign-system/countersign"));
                assert!(objects.contains_key("NetworkPolicy countersign-system/countersign"));
                assert_eq!(
                    deployment["spec"]["template"]["spec"]["containers"][0]["image"],
                    "ghcr.io/countersign/countersign:0.1.0"
                );
            }
        }
    }
    Ok(())
}

/// What the operator's identity may do (each needed by a code path) and may
/// not do (anything else an attacker holding its token would want).
const CAN: &[&str] = &[
    "get customresourcedefinitions.apiextensions.k8s.io/tenants.platform.countersign.dev",
    "watch tenants.platform.countersign.dev",
    "patch identityproviders.platform.countersign.dev -n team-a",
    "patch groupmappings.platform.countersign.dev/status -n team-a",
    "get secrets -n team-a",
    "watch secrets --all-namespaces",
    "create secrets -n team-a",
    "update secrets -n team-a",
    "create events.events.k8s.io -n team-a",
    "get validatingadmissionpolicies.admissionregistration.k8s.io/countersign-approval-guard",
    "get mutatingadmissionpolicybindings.admissionregistration.k8s.io/countersign-stamp-declarer",
    "create leases.coordination.k8s.io -n countersign-system",
    "patch leases.coordination.k8s.io/countersign-leader -n countersign-system",
    "patch configmaps/countersign-audit-anchor -n countersign-system",
];
const CANNOT: &[&str] = &[
    "create clusterroles.rbac.authorization.k8s.io",
    "bind clusterroles.rbac.authorization.k8s.io",
    "escalate clusterroles.rbac.authorization.k8s.io",
    "create clusterrolebindings.rbac.authorization.k8s.io",
    "create rolebindings.rbac.authorization.k8s.io -n team-a",
    "patch validatingadmissionpolicies.admissionregistration.k8s.io/countersign-approval-guard",
    "delete validatingadmissionpolicybindings.admissionregistration.k8s.io/countersign-approval-guard",
    "patch mutatingadmissionpolicies.admissionregistration.k8s.io/countersign-stamp-requester",
    "get validatingadmissionpolicies.admissionregistration.k8s.io/someone-elses-policy",
    "patch customresourcedefinitions.apiextensions.k8s.io/tenants.platform.countersign.dev",
    "get customresourcedefinitions.apiextensions.k8s.io/certificates.cert-manager.io",
    "create tenants.platform.countersign.dev",
    "update tenants.platform.countersign.dev",
    "delete tenants.platform.countersign.dev",
    "delete identityproviders.platform.countersign.dev -n team-a",
    "approve identityproviders.platform.countersign.dev -n team-a",
    "administer approvalpolicies.platform.countersign.dev",
    "delete secrets -n team-a",
    "patch secrets -n team-a",
    "create pods -n team-a",
    "create pods/exec -n countersign-system",
    "create deployments.apps -n countersign-system",
    "patch deployments.apps/countersign -n countersign-system",
    "create serviceaccounts/token -n countersign-system",
    "get configmaps -n team-a",
    "patch configmaps/argocd-cm -n countersign-system",
    "patch leases.coordination.k8s.io/kube-controller-manager -n kube-system",
    "patch leases.coordination.k8s.io/other-leader -n countersign-system",
    "create namespaces",
    "impersonate users",
    "create certificatesigningrequests.certificates.k8s.io",
];

/// Asks the API server (SubjectAccessReview through kubectl) what the
/// operator's identity may do; returns the table of answers.
fn can_i(kubeconfig: &std::path::Path, check: &str) -> anyhow::Result<bool> {
    let mut args: Vec<&str> = vec!["auth", "can-i"];
    args.extend(check.split_whitespace());
    args.extend(["--as", OPERATOR]);
    // can-i exits 1 for "no"; both answers are on stdout.
    let out = match run("kubectl", &args, Some(kubeconfig))? {
        Ok(out) => out,
        Err(out) => out,
    };
    let answer = out.lines().rev().find(|l| l.trim() == "yes" || l.trim() == "no");
    match answer.map(str::trim) {
        Some("yes") => Ok(true),
        Some(_) => Ok(false),
        None => bail!("kubectl auth can-i {check}: {out}"),
    }
}

#[tokio::test]
async fn the_chart_installs_runs_the_operator_under_its_service_account_and_upgrades() -> anyhow::Result<()> {
    // A control plane of its own: Helm must find the cluster without the
    // objects the other tests' harness installs (it refuses to adopt them).
    let cp = countersign_e2e::ControlPlane::start().await?;
    let admin = cp.client().await?;
    let kubeconfig = cp.kubeconfig_path().to_path_buf();
    let kc = Some(kubeconfig.as_path());
    let chart = chart();
    let chart = chart.as_str();
    common::ensure_namespace(&admin, NAMESPACE).await?;
    common::ensure_namespace(&admin, "team-a").await?;

    // Install as a cluster would, minus the hook (no kubelet runs its Job here;
    // the Job itself is checked below). The migrations run in-process.
    let installed = must(
        "helm",
        &[
            "install",
            "countersign",
            chart,
            "--namespace",
            NAMESPACE,
            "--no-hooks",
            "--wait=false",
        ],
        kc,
    )?;
    ensure!(installed.contains("STATUS: deployed"), "{installed}");
    must(
        "kubectl",
        &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"],
        kc,
    )?;

    // Restricted pod security, as the API server's PodSecurity admission
    // enforces it: the Deployment's and the migration Job's pods are admitted
    // in a namespace that enforces the restricted profile.
    let restricted = unique_name("restricted");
    must("kubectl", &["create", "namespace", &restricted], kc)?;
    must(
        "kubectl",
        &[
            "label",
            "namespace",
            &restricted,
            "pod-security.kubernetes.io/enforce=restricted",
        ],
        kc,
    )?;
    let rendered = by_key(&render(&[])?);
    for (owner, template) in [
        (
            "Deployment",
            &rendered["Deployment countersign-system/countersign"]["spec"]["template"],
        ),
        (
            "Job",
            &rendered["Job countersign-system/countersign-migrate"]["spec"]["template"],
        ),
    ] {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{}-pod", owner.to_lowercase()), "namespace": restricted},
            "spec": template["spec"],
        });
        let file = std::env::temp_dir().join(format!("{restricted}-{owner}.json"));
        std::fs::write(&file, pod.to_string())?;
        let out = run("kubectl", &["create", "--dry-run=server", "-f", &arg(&file)], kc)?;
        assert!(
            out.is_ok(),
            "the {owner}'s pod violates the restricted pod security profile: {out:?}"
        );
    }
    // The hook Job is valid for the API server (created in dry-run).
    let job = std::env::temp_dir().join(format!("{restricted}-job.yaml"));
    std::fs::write(
        &job,
        must(
            "helm",
            &[
                "template",
                "countersign",
                chart,
                "--namespace",
                NAMESPACE,
                "--show-only",
                "templates/migrations-job.yaml",
            ],
            None,
        )?,
    )?;
    must("kubectl", &["create", "--dry-run=server", "-f", &arg(&job)], kc)?;

    // The operator's identity may do what its code needs and nothing else.
    let mut refused = Vec::new();
    for check in CAN {
        if !can_i(&kubeconfig, check)? {
            refused.push(format!("cannot {check}"));
        }
    }
    for check in CANNOT {
        if can_i(&kubeconfig, check)? {
            refused.push(format!("CAN {check}"));
        }
    }
    assert!(
        refused.is_empty(),
        "the operator's RBAC is not what its code needs: {refused:?}"
    );

    // The operator under the chart's ServiceAccount, authenticated by a token
    // from the TokenRequest API as a pod's would be: it loads its key, takes
    // the leader lease, reconciles a Tenant and anchors the audit chain.
    let token = must(
        "kubectl",
        &[
            "create",
            "token",
            "countersign",
            "--namespace",
            NAMESPACE,
            "--duration=1h",
        ],
        kc,
    )?;
    let mut config = cp.kube_config();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.trim().to_string().into()),
        ..Default::default()
    };
    let operator_client = countersign_operator::kube_client::from_config(config)?;
    let key_secret = format!("{NAMESPACE}/countersign-encryption-key");
    must(
        "kubectl",
        &[
            "create",
            "secret",
            "generic",
            "countersign-encryption-key",
            "--namespace",
            NAMESPACE,
            &format!("--from-literal=key={}", "k".repeat(32)),
        ],
        kc,
    )?;
    countersign_operator::secret_key::load(&operator_client, &key_secret)
        .await
        .context("the ServiceAccount reads the encryption key Secret")?;
    let (_url, pool) = common::database().await?;
    let run_id = unique_name("chart");
    let operator = common::operator_authenticated_as(&operator_client, &pool, &run_id, |o| {
        o.leader_election = Some(countersign_operator::run::LeaderElection {
            namespace: NAMESPACE.into(),
            lease_name: "countersign-leader".into(),
            identity: "chart-pod".into(),
            duration_seconds: 15,
        });
        o.audit_anchor = Some(countersign_operator::audit_anchor::AnchorTarget {
            namespace: NAMESPACE.into(),
            name: "countersign-audit-anchor".into(),
            interval: Duration::from_secs(1),
        });
    })
    .await?;
    let tenants: Api<Tenant> = Api::all(admin.clone());
    let slug = unique_name("charted");
    tenants
        .create(
            &PostParams::default(),
            &common::tenant(&slug, &run_id, json!({"slug": slug, "name": "Charted"}))?,
        )
        .await?;
    common::wait_tenant(&tenants, &slug, "Ready", |t| {
        common::has_condition(t, "Ready", "True", "Live")
    })
    .await?;
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(admin.clone(), NAMESPACE);
    common::wait_for(
        "the audit anchor ConfigMap the operator writes",
        async || Ok(configmaps.get_opt("countersign-audit-anchor").await?),
        |_| true,
    )
    .await?;
    let holder = must(
        "kubectl",
        &[
            "get",
            "lease",
            "countersign-leader",
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        kc,
    )?;
    assert_eq!(holder, "chart-pod");
    operator.shutdown().await;

    // Upgrade with a changed value: the Deployment follows, the release moves on.
    let upgraded = must(
        "helm",
        &[
            "upgrade",
            "countersign",
            chart,
            "--namespace",
            NAMESPACE,
            "--no-hooks",
            "--set",
            "resyncSeconds=120",
        ],
        kc,
    )?;
    ensure!(upgraded.contains("REVISION: 2"), "{upgraded}");
    let args = must(
        "kubectl",
        &[
            "get",
            "deployment",
            "countersign",
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].args}",
        ],
        kc,
    )?;
    assert!(args.contains("--resync-seconds=120"), "{args}");

    // Uninstall: the CRDs stay (resource-policy keep), and with them every
    // Countersign object; the operator's RBAC and workload go.
    must("helm", &["uninstall", "countersign", "--namespace", NAMESPACE], kc)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(tenants.get_opt(&slug).await?.is_some(), "uninstalling deleted a Tenant");
    must("kubectl", &["get", "crd", "tenants.platform.countersign.dev"], kc)?;
    let gone = run("kubectl", &["get", "clusterrole", "countersign-operator"], kc)?;
    ensure!(gone.is_err(), "the operator's ClusterRole outlived the release");

    // The kustomize path installs the same objects into the same cluster.
    must(
        "kubectl",
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-k",
            &arg(&common::repo_root().join("kustomize/overlays/dev")),
        ],
        kc,
    )?;
    must("kubectl", &["get", "clusterrole", "countersign-operator"], kc)?;
    must("kubectl", &["get", "deployment", "countersign", "-n", NAMESPACE], kc)?;
    assert!(can_i(&kubeconfig, "watch tenants.platform.countersign.dev")?);
    assert!(!can_i(&kubeconfig, "create clusterroles.rbac.authorization.k8s.io")?);
    Ok(())
}

/// Every end-to-end test's operator goes through `common::as_operator`: it
/// must really be the chart's ServiceAccount to the API server, or those
/// tests would prove nothing about the chart's RBAC.
#[tokio::test]
async fn test_operators_act_as_the_charts_service_account() -> anyhow::Result<()> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let admin = common::cluster().await?;
    let operator = common::as_operator(&admin);
    let reviews: Api<SelfSubjectReview> = Api::all(operator.clone());
    let review = reviews
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {}}))?,
        )
        .await?;
    let user = review.status.and_then(|s| s.user_info).and_then(|u| u.username);
    assert_eq!(user.as_deref(), Some(OPERATOR));
    let tenants: Api<Tenant> = Api::all(operator.clone());
    tenants
        .list(&Default::default())
        .await
        .context("the operator lists Tenants")?;
    let roles: Api<ClusterRole> = Api::all(operator);
    match roles.list(&Default::default()).await {
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
        other => bail!("the operator's identity could list ClusterRoles: {other:?}"),
    }
}
