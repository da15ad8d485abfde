//! MPI jobs: a producer per rank, named from the launcher's environment.
//!
//! tcasm has no MPI of its own: the rank and the job's size come from what `mpirun`
//! (OpenMPI), MPICH/PMI, PMIx or Slurm's `srun` put in every rank's environment. A producer
//! name holding `%r` (`heat.%r`) becomes the rank's own name (`heat.3`), and the [`Job`] it
//! belongs to travels in the store's header, so that observers and the checkpoints they write
//! know the rank and how many ranks there are (see [`crate::checkpoint::global`]).

/// The variables read for the rank, in this order.
pub const RANK_VARS: [&str; 4] = ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"];
/// The variables read for the job's size, in this order.
pub const SIZE_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"];
/// The variables that tell one launch of a job from another, in this order (OpenMPI and
/// PMIx; Slurm's job and step).
pub const LAUNCH_VARS: [&str; 3] = ["PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "SLURM_JOB_ID"];
/// The placeholder for the rank in a producer name.
pub const RANK_PLACEHOLDER: &str = "%r";
/// The most ranks a job may have (a rank and a size each fit in 32 bits).
pub const MAX_RANKS: u64 = u32::MAX as u64;

/// One rank of an MPI job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Job {
    pub rank: u32,
    /// How many ranks the job has (> `rank`).
    pub size: u32,
    /// Which launch of the job (`mpirun`, `srun`) the rank belongs to: a hash of the
    /// launcher's job id ([`LAUNCH_VARS`]), 0 when none is set. Checkpoints of one version
    /// from different launches (a relaunch that restarted from an older version makes the
    /// same version numbers again) never form one global version.
    pub launch: u64,
}

/// Why a rank producer's name could not be made.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the producer name {name:?} holds %r, but no MPI rank is set ({}): launch it with mpirun or srun, or name it without %r", RANK_VARS.join(", "))]
    NoRank { name: String },
    #[error("the producer name {name:?} holds %r, but the job's size is not set ({}): launch it with mpirun or srun", SIZE_VARS.join(", "))]
    NoSize { name: String },
    #[error("{var}={value:?} is not a rank or job size (a number below {MAX_RANKS})")]
    NotANumber { var: &'static str, value: String },
    #[error("rank {rank} is not below the job's size {size} ({rank_var}, {size_var})")]
    RankOutOfRange { rank: u32, size: u32, rank_var: &'static str, size_var: &'static str },
}

impl Job {
    /// Packs the job into two words of the store's header (0, 0: no job).
    pub fn to_words(job: Option<Job>) -> [u64; 2] {
        job.map_or([0, 0], |j| [(j.size as u64) << 32 | j.rank as u64, j.launch])
    }

    /// The inverse of [`Job::to_words`]; `Err` for words no job packs to.
    pub fn from_words([word, launch]: [u64; 2]) -> Result<Option<Job>, String> {
        if word == 0 {
            return Ok(None);
        }
        let (size, rank) = ((word >> 32) as u32, word as u32);
        if rank >= size {
            return Err(format!("job word names rank {rank} of {size}"));
        }
        Ok(Some(Job { rank, size, launch }))
    }

    /// The name with `%r` replaced by the rank.
    pub fn name(&self, pattern: &str) -> String {
        pattern.replace(RANK_PLACEHOLDER, &self.rank.to_string())
    }
}

/// The first of `vars` that is set, with its value parsed.
fn first_set(
    vars: &[&'static str],
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<(&'static str, u32)>, JobError> {
    let Some((var, value)) = vars.iter().find_map(|v| get(v).map(|value| (*v, value))) else { return Ok(None) };
    match value.trim().parse::<u32>() {
        Ok(n) if (n as u64) < MAX_RANKS => Ok(Some((var, n))),
        _ => Err(JobError::NotANumber { var, value }),
    }
}

/// Expands a producer name: `Ok((name, None))` when it has no `%r` (a producer of its own),
/// else the rank's name and its [`Job`], read through `get` (the environment, in
/// [`expand_name`]).
pub fn expand_name_with(name: &str, get: impl Fn(&str) -> Option<String>) -> Result<(String, Option<Job>), JobError> {
    if !name.contains(RANK_PLACEHOLDER) {
        return Ok((name.to_string(), None));
    }
    let Some((rank_var, rank)) = first_set(&RANK_VARS, &get)? else {
        return Err(JobError::NoRank { name: name.into() });
    };
    let Some((size_var, size)) = first_set(&SIZE_VARS, &get)? else {
        return Err(JobError::NoSize { name: name.into() });
    };
    if rank >= size {
        return Err(JobError::RankOutOfRange { rank, size, rank_var, size_var });
    }
    let launch = match LAUNCH_VARS.iter().find_map(|v| get(v)) {
        // Slurm: the job and its step.
        Some(id) => {
            crc32fast::hash(format!("{id}.{}", get("SLURM_STEP_ID").unwrap_or_default()).as_bytes()) as u64 | 1 << 32
        }
        None => 0,
    };
    let job = Job { rank, size, launch };
    Ok((job.name(name), Some(job)))
}

/// [`expand_name_with`] the process's environment.
pub fn expand_name(name: &str) -> Result<(String, Option<Job>), JobError> {
    expand_name_with(name, |v| std::env::var(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |v| pairs.iter().find(|(k, _)| *k == v).map(|(_, x)| x.to_string())
    }

    #[test]
    fn names_without_placeholder_are_kept() {
        let (name, job) = expand_name_with("heat", env(&[("PMI_RANK", "3")])).unwrap();
        assert_eq!((name.as_str(), job), ("heat", None));
    }

    #[test]
    fn the_first_variable_set_wins() {
        let e = [("SLURM_PROCID", "7"), ("PMI_RANK", "2"), ("SLURM_NTASKS", "8"), ("PMI_SIZE", "4")];
        let (name, job) = expand_name_with("heat.%r", env(&e)).unwrap();
        assert_eq!(name, "heat.2");
        assert_eq!(job.map(|j| (j.rank, j.size, j.launch)), Some((2, 4, 0)));
        let e = [("SLURM_PROCID", "7"), ("SLURM_NTASKS", "8")];
        assert_eq!(expand_name_with("r%r-x", env(&e)).unwrap().0, "r7-x");
    }

    #[test]
    fn missing_or_bad_variables_say_what_to_do() {
        let e = expand_name_with("heat.%r", env(&[])).unwrap_err();
        assert!(matches!(e, JobError::NoRank { .. }) && e.to_string().contains("OMPI_COMM_WORLD_RANK"), "{e}");
        let e = expand_name_with("heat.%r", env(&[("PMIX_RANK", "1")])).unwrap_err();
        assert!(matches!(e, JobError::NoSize { .. }), "{e}");
        let e = expand_name_with("heat.%r", env(&[("PMI_RANK", "x"), ("PMI_SIZE", "2")])).unwrap_err();
        assert!(matches!(e, JobError::NotANumber { var: "PMI_RANK", .. }), "{e}");
        let e = expand_name_with("heat.%r", env(&[("PMI_RANK", "2"), ("PMI_SIZE", "2")])).unwrap_err();
        assert!(matches!(e, JobError::RankOutOfRange { rank: 2, size: 2, .. }), "{e}");
    }

    #[test]
    fn words_round_trip() {
        for job in [None, Some(Job { rank: 0, size: 1, launch: 0 }), Some(Job { rank: 5, size: 6, launch: 7 << 32 })] {
            assert_eq!(Job::from_words(Job::to_words(job)).unwrap(), job);
        }
        assert!(Job::from_words([2 << 32 | 2, 0]).is_err());
    }

    #[test]
    fn launches_differ_by_the_launchers_job_id() {
        let launch = |e: &[(&str, &str)]| expand_name_with("h%r", env(e)).unwrap().1.unwrap().launch;
        let base = [("PMI_RANK", "0"), ("PMI_SIZE", "1")];
        assert_eq!(launch(&base), 0);
        let a = launch(&[base[0], base[1], ("PMIX_NAMESPACE", "1090322433")]);
        let b = launch(&[base[0], base[1], ("PMIX_NAMESPACE", "1090322434")]);
        let s = launch(&[base[0], base[1], ("SLURM_JOB_ID", "77"), ("SLURM_STEP_ID", "1")]);
        assert!(a != 0 && b != 0 && s != 0 && a != b && a != s);
    }
}
