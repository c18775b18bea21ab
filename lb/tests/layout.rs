//! The layout's rule (DESIGN.md, issue 11): `worker` and `control` never import each other,
//! they meet in `shared`; `shared` serves both and imports neither; `balance` and `proxy` import
//! nothing above them. Checked on the source text, so that a shortcut fails here.

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            ));
        }
    }
}

#[test]
fn the_planes_meet_only_in_shared() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rules: &[(&str, &[&str])] = &[
        ("worker", &["crate::control"]),
        ("control", &["crate::worker"]),
        ("shared", &["crate::control", "crate::worker"]),
        (
            "proxy",
            &[
                "crate::control",
                "crate::worker",
                "crate::shared",
                "crate::config",
            ],
        ),
        (
            "balance",
            &[
                "crate::control",
                "crate::worker",
                "crate::shared",
                "crate::proxy",
            ],
        ),
    ];
    let mut broken = Vec::new();
    for (module, forbidden) in rules {
        let mut files = Vec::new();
        sources(&src.join(module), &mut files);
        assert!(!files.is_empty(), "no sources under {module}");
        for (path, text) in files {
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for f in *forbidden {
                    if code.contains(f) {
                        broken.push(format!("{path}:{}: {module} uses {f}", n + 1));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}
