//! Replays every saved input through its target's check on the stable toolchain: the seeds (`seeds/<target>/`)
//! and every input that once broke a check (`regressions/<target>/`, one file per defect, named after it).

use std::path::Path;

#[test]
fn every_seed_and_regression_passes_its_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut replayed = 0;
    for folder in ["seeds", "regressions"] {
        for target in presently_fuzz::TARGETS {
            let dir = root.join(folder).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("readable folder").path();
                let data = std::fs::read(&path).expect("readable input");
                println!("{}", path.display());
                presently_fuzz::check(target, &data);
                replayed += 1;
            }
        }
    }
    assert!(
        replayed >= presently_fuzz::TARGETS.len(),
        "only {replayed} inputs found"
    );
}
