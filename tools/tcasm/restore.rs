//! `tcasm restore`: a checkpointed version back into files (`.npy`, or HDF5 + XDMF), from one
//! checkpoint directory or, with `--global`, from an MPI job's ranks assembled.
use std::path::{Path, PathBuf};

use tcasm::checkpoint::{self, restart, Restore};

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// A checkpoint directory (or give the levels with --from).
    #[arg(required_unless_present = "from", conflicts_with = "from")]
    dir: Option<PathBuf>,
    /// Checkpoint directories LOCAL:PERSISTENT (level 1 first): the newest complete version
    /// in any of them is restored, from the first directory holding it intact.
    #[arg(long, value_name = "DIRS")]
    from: Option<String>,
    /// The version to restore (default: the newest complete checkpoint).
    #[arg(long)]
    version: Option<u64>,
    /// Where to write one .npy file per region and manifest.json (written into a temporary
    /// directory beside it and renamed at the end; an earlier result there is replaced), or
    /// with --format hdf5 the .h5 file (the .xmf file goes beside it).
    #[arg(long)]
    out: PathBuf,
    /// npy: a directory of .npy files. hdf5: one HDF5 file and an XDMF file for ParaView and
    /// VisIt (needs a build with `--features hdf5`).
    #[arg(long, value_enum, default_value_t = Format::Npy)]
    format: Format,
    /// With --format hdf5: every complete checkpoint from A to B (both included; `A..`,
    /// `..B`), a group per version.
    #[arg(long, value_name = "A..B", conflicts_with = "version", value_parser = crate::export::parse_versions)]
    versions: Option<crate::export::VersionRange>,
    /// With --format hdf5: replace the output files if they exist.
    #[arg(long)]
    force: bool,
    /// DIR is an MPI job's directory (`checkpoint --all ... --flush-to DIR`): assemble the
    /// ranks' tiles of a global version (the newest, or --version) into one array per region
    /// (tiles placed by their `global_shape` and `offset` regions).
    #[arg(long, requires = "dir")]
    global: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Npy,
    Hdf5,
}

/// The checkpoint `args` asks for, from the directory or the first level holding it.
fn open_restore(args: &RestoreArgs) -> crate::Result<Restore> {
    let dirs: Vec<PathBuf> = match (&args.dir, &args.from) {
        (Some(dir), _) => vec![dir.clone()],
        (None, Some(from)) => restart::split_dirs(from),
        (None, None) => unreachable!("clap requires DIR or --from"),
    };
    let paths: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    Ok(restart::open(&paths, args.version)?)
}

pub fn restore(args: RestoreArgs) -> crate::Result {
    if args.format == Format::Hdf5 {
        if args.global {
            return Err("--global assembles .npy files; leave out --format hdf5".into());
        }
        let RestoreArgs { dir, version, versions, out, force, .. } = args;
        let Some(dir) = dir else {
            return Err("--format hdf5 exports from one checkpoint directory: give DIR instead of --from".into());
        };
        return crate::export::hdf5(crate::export::Hdf5Args { dir, version, versions, out, force });
    }
    if args.versions.is_some() || args.force {
        return Err("--versions and --force go with --format hdf5; a .npy restore is of one version".into());
    }
    checkpoint::refuse_non_directory(&args.out)?;
    if args.global {
        let dir = args.dir.as_deref().expect("clap requires DIR with --global");
        let field = checkpoint::assemble::assemble(dir, args.version)?;
        let regions = checkpoint::restore_global_npy(&field, &args.out)?;
        println!(
            "assembled global version {} of {} ranks from {} into {}",
            field.version,
            field.ranks,
            dir.display(),
            args.out.display()
        );
        for r in regions {
            println!("  {:<24} {:<4} {:<18} {}", r.name, r.dtype, format!("{:?}", r.shape), r.file);
        }
        return Ok(());
    }
    let restore = open_restore(&args)?;
    let regions = checkpoint::restore_npy(&restore, &args.out)?;
    let m = restore.manifest();
    println!(
        "restored version {} of {:?} (chain {}: base v{} and {}, in {}) into {}",
        m.version,
        m.space.producer,
        m.chain,
        m.base,
        crate::plural(restore.replayed().len() as u64 - 1, "increment"),
        restore.chain_dir().display(),
        args.out.display()
    );
    for r in regions {
        println!("  {:<24} {:<4} {:<18} {}", r.name, r.dtype, format!("{:?}", r.shape), r.file);
    }
    Ok(())
}
