//! Writes every CRD as YAML into the given directory (default `charts/countersign/files/crds`),
//! or with `--check` fails when the committed files differ from the types.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.iter().any(|a| a == "--check");
    args.retain(|a| a != "--check");
    let dir = PathBuf::from(args.pop().unwrap_or_else(|| "charts/countersign/files/crds".into()));
    let mut stale = Vec::new();
    for crd in countersign_crds::all_crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let yaml = match countersign_crds::crd_yaml(&crd) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("cannot render {name}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let path = dir.join(format!("{name}.yaml"));
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                stale.push(path.display().to_string());
            }
        } else if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, yaml)) {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if !stale.is_empty() {
        eprintln!("CRD YAML is stale; run `cargo run -p countersign-crds --bin crdgen` and commit:");
        for s in stale {
            eprintln!("  {s}");
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
