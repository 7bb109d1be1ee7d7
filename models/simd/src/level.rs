//! Which instructions the kernels use: the best level this CPU has, found once per process and
//! capped, where an operator wants it, by the `CPU_KERNELS` environment variable.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// The environment variable that forces a lower level than the CPU's best (`portable`,
/// `avx2`, `avx512`, `avx512-bf16`): for tests, and for fleets that want the same numbers on
/// every machine.
pub const ENV: &str = "CPU_KERNELS";

/// A set of vector instructions the kernels are written for, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Plain Rust for the build's baseline (SSE2 on x86-64): any CPU.
    Portable,
    /// AVX2 and FMA, 8 lanes of f32 (x86-64-v3: Haswell, Zen and later).
    Avx2,
    /// AVX-512 F, BW, DQ and VL with FMA, 16 lanes (x86-64-v4: Skylake-SP, Zen 4 and later).
    Avx512,
    /// AVX-512 with the BF16 dot product `vdpbf16ps` (Cooper Lake, Sapphire Rapids, Zen 4 and
    /// later), which bf16 weights use.
    Avx512Bf16,
}

/// Why `CPU_KERNELS` cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LevelError {
    #[error("{ENV}={0:?} is not a level: give one of portable, avx2, avx512, avx512-bf16")]
    Unknown(String),
    #[error("{ENV}={wanted} asks for more than this CPU has (at most {best})")]
    Unsupported { wanted: Level, best: Level },
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 4] = [Level::Portable, Level::Avx2, Level::Avx512, Level::Avx512Bf16];

    /// The name `CPU_KERNELS`, the logs and the model card use.
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Avx512Bf16 => "avx512-bf16",
        }
    }

    /// Whether this CPU runs the level's instructions.
    pub fn is_supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = || is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let avx512 = || {
                avx2()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl")
            };
            match self {
                Level::Portable => true,
                Level::Avx2 => avx2(),
                Level::Avx512 => avx512(),
                Level::Avx512Bf16 => avx512() && is_x86_feature_detected!("avx512bf16"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Level::Portable
        }
    }

    /// The best level this CPU has.
    pub fn best() -> Level {
        Level::ALL
            .into_iter()
            .rev()
            .find(|level| level.is_supported())
            .unwrap_or(Level::Portable)
    }

    /// Every level this CPU runs, lowest first: what the kernel tests compare.
    pub fn supported() -> Vec<Level> {
        Level::ALL
            .into_iter()
            .filter(|level| level.is_supported())
            .collect()
    }

    /// The level `CPU_KERNELS` asks for, or the best when it is unset.
    pub fn from_env() -> Result<Level, LevelError> {
        match std::env::var(ENV) {
            Ok(value) if !value.trim().is_empty() => {
                let wanted: Level = value.parse()?;
                let best = Level::best();
                if wanted > best {
                    return Err(LevelError::Unsupported { wanted, best });
                }
                Ok(wanted)
            }
            _ => Ok(Level::best()),
        }
    }

    /// f32 lanes of the level's vectors.
    pub fn lanes(self) -> usize {
        match self {
            Level::Portable | Level::Avx2 => 8,
            Level::Avx512 | Level::Avx512Bf16 => 16,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Level {
    type Err = LevelError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        Level::ALL
            .into_iter()
            .find(|level| level.name().eq_ignore_ascii_case(value))
            .ok_or_else(|| LevelError::Unknown(value.to_string()))
    }
}

/// The level the models load their kernels for unless told otherwise: [`Level::from_env`],
/// decided on first use and kept for the life of the process (where `CPU_KERNELS` cannot be
/// followed, the CPU's best; services check [`Level::from_env`] at start and refuse instead).
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| Level::from_env().unwrap_or_else(|_| Level::best()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for level in Level::ALL {
            assert_eq!(level.name().parse::<Level>(), Ok(level));
            assert_eq!(level.to_string(), level.name());
        }
        assert_eq!(" AVX2 ".parse::<Level>(), Ok(Level::Avx2));
        assert!(matches!("sse9".parse::<Level>(), Err(LevelError::Unknown(_))));
    }

    #[test]
    fn the_supported_levels_start_portable_and_end_at_the_best() {
        let supported = Level::supported();
        assert_eq!(supported.first(), Some(&Level::Portable));
        assert_eq!(supported.last(), Some(&Level::best()));
        assert!(supported.windows(2).all(|pair| pair[0] < pair[1]));
        eprintln!(
            "this CPU: {}",
            supported.iter().map(|l| l.name()).collect::<Vec<_>>().join(", ")
        );
    }
}
