//! `tcasm verify`: which checkpoints of a directory (or of every rank of an MPI job) can be
//! restored, and what damage makes the others unusable; fails without a complete one.
use std::fs::{self};
use std::path::{Path, PathBuf};

use indicatif::HumanBytes;
use tcasm::checkpoint::{self, global};

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// A checkpoint directory, or the directory of an MPI job's ranks (`--all`): then every
    /// rank's directory is checked, and the global versions listed.
    dir: PathBuf,
}

/// Versions for a message: all of them when few, else the first ones, the last and a count.
fn versions(vs: &[u64]) -> String {
    match vs {
        [first @ .., last] if vs.len() > 8 => {
            let shown: Vec<String> = first[..6].iter().map(|v| format!("v{v}")).collect();
            format!("{} … v{last} ({} in all)", shown.join(", "), vs.len())
        }
        _ => vs.iter().map(|v| format!("v{v}")).collect::<Vec<_>>().join(", "),
    }
}

/// Checks everything; the exit status says whether every complete checkpoint is intact.
pub fn verify(args: VerifyArgs) -> crate::Result {
    if is_job_dir(&args.dir) {
        return verify_job(&args.dir);
    }
    verify_one(&args.dir)
}

/// Whether `dir` holds the per-rank directories of an MPI job rather than chains.
fn is_job_dir(dir: &Path) -> bool {
    let entries: Vec<fs::DirEntry> = fs::read_dir(dir).into_iter().flatten().flatten().collect();
    let named = |e: &fs::DirEntry, what: fn(&str) -> bool| e.file_name().to_str().is_some_and(what);
    let rank_dirs = || entries.iter().any(|e| e.path().is_dir() && named(e, |n| !n.starts_with('.')));
    !entries.iter().any(|e| named(e, |n| n.starts_with("chain-")))
        && (dir.join(global::GLOBAL_DIR).is_dir() || rank_dirs())
}

/// `verify` of a job's directory: each rank's checkpoints, then one `global:` line per
/// global version (each rank's checkpoint it names restorable, with the manifest it names),
/// and the versions some ranks lack.
fn verify_job(dir: &Path) -> crate::Result {
    let st = global::status(dir)?;
    let mut ranks: Vec<String> = fs::read_dir(dir)
        .map_err(|e| format!("listing {}: {e}", dir.display()))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n != global::GLOBAL_DIR && !n.starts_with('.'))
        .collect();
    ranks.sort();
    let mut problems = 0;
    let mut restorable = std::collections::BTreeMap::new();
    for rank in &ranks {
        let report = checkpoint::verify(&global::rank_dir(dir, rank))?;
        println!("{rank}: {} checkpoints restorable, {} problems", report.restorable.len(), report.damage.len());
        for d in &report.damage {
            println!("  DAMAGED: {}", d.error);
        }
        problems += report.damage.len();
        restorable.insert(rank.clone(), report.restorable);
    }
    for name in &st.foreign {
        println!("not part of a job: {name}");
    }
    let (globals, bad) = global::read_all(dir)?;
    for e in &bad {
        println!("DAMAGED: {e}");
    }
    problems += bad.len();
    for g in &globals {
        let broken: Vec<&str> = g
            .ranks
            .iter()
            .filter(|p| {
                let listed = restorable.get(&p.producer).is_some_and(|r| r.contains(&(p.chain, g.version)));
                !(listed && global::part_present(dir, p, g.version))
            })
            .map(|p| p.producer.as_str())
            .collect();
        if broken.is_empty() {
            println!("global: v{} complete, {} ranks", g.version, g.ranks.len());
        } else {
            println!(
                "DAMAGED: global v{}: the checkpoints of {} it names are not restorable as named",
                g.version,
                broken.join(", ")
            );
            problems += 1;
        }
    }
    for (version, size, missing) in &st.incomplete {
        let missing: Vec<String> = missing.iter().map(u32::to_string).collect();
        println!("incomplete global v{version}: ranks {} of {size} missing", missing.join(", "));
    }
    match (problems, globals.last()) {
        (0, Some(g)) => {
            println!("intact: newest global version v{} ({} global versions)", g.version, globals.len());
            Ok(())
        }
        (0, None) => Err(format!(
            "no complete checkpoint of the job in {}: no version is complete for every rank yet",
            dir.display()
        )
        .into()),
        (n, _) => Err(format!("{n} problems").into()),
    }
}

fn verify_one(dir: &Path) -> crate::Result {
    let report = checkpoint::verify(dir)?;
    for path in &report.incomplete {
        println!("incomplete (never finished, ignored): {}", path.display());
    }
    for d in &report.damage {
        println!("DAMAGED: {}", d.error);
        println!("  unrestorable in chain {}: {}", d.chain, versions(&d.unrestorable));
    }
    let chains = report.restorable.iter().map(|(c, _)| c).collect::<std::collections::BTreeSet<_>>();
    for chain in chains {
        let vs: Vec<u64> = report.restorable.iter().filter(|(c, _)| c == chain).map(|(_, v)| *v).collect();
        println!(
            "chain {chain}: {} restorable, v{}..v{}",
            crate::plural(vs.len() as u64, "checkpoint"),
            vs[0],
            vs[vs.len() - 1]
        );
    }
    println!("{} chunks ({}) checked", report.chunks_checked, HumanBytes(report.bytes_checked));
    if report.intact() && report.restorable.is_empty() {
        Err(format!(
            "no complete checkpoint in {}: is it the directory `tcasm checkpoint --dir` wrote to?",
            dir.display()
        )
        .into())
    } else if report.intact() {
        println!("intact: {} restorable", crate::plural(report.restorable.len() as u64, "checkpoint"));
        Ok(())
    } else {
        let lost: std::collections::BTreeSet<_> =
            report.damage.iter().flat_map(|d| d.unrestorable.iter().map(move |v| (d.chain, *v))).collect();
        Err(format!(
            "{}; {} unrestorable, {} restorable",
            crate::plural(report.damage.len() as u64, "problem"),
            crate::plural(lost.len() as u64, "checkpoint"),
            report.restorable.len()
        )
        .into())
    }
}
