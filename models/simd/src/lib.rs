//! CPU kernels chosen at run time: one x86-64 binary runs at the best level of vector
//! instructions the CPU has (AVX-512 with BF16, AVX-512, AVX2, or portable code), decided once
//! per process ([`level`]) and held by each loaded model, so that a binary built for any
//! x86-64 never stops with "Illegal instruction" and never gives up the wide vectors.
//!
//! A kernel is written once, generic over the vector type [`F32x`], as a [`Kernel`];
//! [`dispatch`] runs it compiled for a level. The matrix products shared by the models
//! ([`gemm`], [`dot`]) are built this way.

use std::sync::OnceLock;

pub mod dot;
pub mod gemm;
mod level;
pub mod team;
mod vector;

pub use level::{level, Level, LevelError, ENV};
#[cfg(target_arch = "x86_64")]
pub use vector::{Avx2, Avx512};
pub use vector::{F32x, Portable};

/// `ln(sum(exp(values)))`, summed in f64: in f32, each of a vocabulary's tens of thousands of
/// small terms loses part of itself to rounding against the growing sum, and on a trained
/// model's peaked distributions those losses add up to 1e-3 in the log-probabilities. The
/// normaliser of every softmax whose probabilities are reported.
pub fn log_sum_exp(values: &[f32]) -> f64 {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = values.iter().map(|&v| f64::from((v - max).exp())).sum();
    f64::from(max) + total.ln()
}

/// Softmax of `values`, normalised by [`log_sum_exp`].
pub fn softmax(values: &[f32]) -> Vec<f32> {
    let log_total = log_sum_exp(values);
    values
        .iter()
        .map(|&v| (f64::from(v) - log_total).exp() as f32)
        .collect()
}

/// Asks the CPU to bring the cache line holding `p` into its caches ahead of use: a hint,
/// valid for any address (SSE, so at every level).
///
/// Written as assembly that touches no memory rather than as `_mm_prefetch`: LLVM treats the
/// intrinsic as a read of memory it cannot place, and in a loop that prefetches it then keeps
/// a micro-tile's sums in memory, storing every one at every step (at AVX2 the stores, not the
/// multiply-adds, then set the tile's pace). To the program a prefetch reads nothing.
#[inline(always)]
#[allow(clippy::pointers_in_nomem_asm_block)] // the pointer is only a hint: nothing is read
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing architecturally and faults on no address; SSE is part
    // of x86-64's baseline.
    unsafe {
        std::arch::asm!("prefetcht0 [{p}]", p = in(reg) p, options(nomem, nostack, preserves_flags));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks the kernel to back `memory` with transparent huge pages (when it is over 2 MiB, one
/// huge page). Model weights are streamed from memory once per token or image, and on 4 KiB
/// pages every page is a TLB miss and a stop for the hardware prefetchers; filling fresh
/// 4 KiB pages also costs a page fault each. Advise before the first write: pages already
/// touched stay small.
pub fn advise_huge_pages<T>(memory: &mut [T]) {
    let bytes = std::mem::size_of_val(memory);
    let start = memory.as_mut_ptr() as usize;
    let aligned = start.next_multiple_of(4096);
    if bytes > 2 * 1024 * 1024 && aligned < start + bytes {
        // SAFETY: the range lies inside `memory`; the advice only changes how the kernel
        // backs it.
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                start + bytes - aligned,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

/// Whether this CPU multiplies bf16 pairs (`vdpbf16ps`, 32 products an instruction) faster
/// than it multiplies f32 (`vfmadd231ps`, 16): decided once, by timing both on registers for
/// about a millisecond. AVX-512 BF16 does not promise the rate: where the pair instruction
/// runs at less than twice the multiply-add's rate per product (some Sapphire Rapids parts run
/// it far slower), bf16 weights are widened for multiply-adds instead of multiplied in pairs.
pub fn bf16_pairs_pay() -> bool {
    static PAY: OnceLock<bool> = OnceLock::new();
    *PAY.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if Level::Avx512Bf16.is_supported() {
            // SAFETY: the CPU has AVX-512 BF16 (checked above).
            let (pairs, multiply_adds) = unsafe { calibration::rates() };
            return 2.0 * pairs > 1.1 * multiply_adds;
        }
        false
    })
}

#[cfg(target_arch = "x86_64")]
mod calibration {
    use std::arch::x86_64::*;
    use std::time::Instant;

    /// Steps timed of each instruction, twelve independent chains a step.
    const STEPS: usize = 20_000;

    /// Instructions per second of `vdpbf16ps` and of `vfmadd231ps` (zmm), best of three.
    ///
    /// # Safety
    /// The CPU must have AVX-512 BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn rates() -> (f64, f64) {
        let time = |run: &dyn Fn() -> f32| {
            (0..3)
                .map(|_| {
                    let start = Instant::now();
                    std::hint::black_box(run());
                    start.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min)
        };
        let count = (12 * STEPS) as f64;
        // SAFETY: the caller's level.
        let pairs = time(&|| unsafe { pair_chains() });
        // SAFETY: as above.
        let multiply_adds = time(&|| unsafe { multiply_add_chains() });
        (count / pairs, count / multiply_adds)
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn pair_chains() -> f32 {
        let mut acc = [_mm512_setzero_ps(); 12];
        // SAFETY: register operations of the caller's level.
        unsafe {
            let one: __m512bh = std::mem::transmute(_mm512_set1_epi32(std::hint::black_box(0x3f80_3f80)));
            for _ in 0..STEPS {
                for x in acc.iter_mut() {
                    *x = _mm512_dpbf16_ps(*x, one, one);
                }
            }
        }
        total(acc)
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn multiply_add_chains() -> f32 {
        let mut acc = [_mm512_setzero_ps(); 12];
        let (a, b) = (_mm512_set1_ps(std::hint::black_box(0.999)), _mm512_set1_ps(1e-7));
        for _ in 0..STEPS {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        total(acc)
    }

    /// The chains' sum, so that none of them is optimised away.
    #[target_feature(enable = "avx512f")]
    fn total(chains: [__m512; 12]) -> f32 {
        _mm512_reduce_add_ps(
            chains
                .into_iter()
                .fold(_mm512_setzero_ps(), |sum, x| _mm512_add_ps(sum, x)),
        )
    }
}

/// A computation written once for every level: [`dispatch`] calls [`Kernel::run`] with the
/// level's vector type, from a function compiled for that level's instructions.
pub trait Kernel {
    type Output;

    /// The computation with vectors `V`. Implementations must be `#[inline(always)]`, so that
    /// they are compiled for the level's instructions together with the caller, and should
    /// not call `V`'s operations inside closures: a closure is a function of its own, compiled
    /// without the level's instructions, where every vector operation becomes a call.
    ///
    /// # Safety
    /// The CPU must have `V`'s instructions ([`dispatch`] ensures it).
    unsafe fn run<V: F32x>(self) -> Self::Output;
}

/// Runs `kernel` at `level`, which must be one this CPU has ([`Level::is_supported`]; the
/// models hold levels that came from [`level`] or [`Level::supported`]).
///
/// # Panics
/// When the CPU lacks `level`'s instructions: running them would be undefined behaviour.
#[inline]
pub fn dispatch<K: Kernel>(level: Level, kernel: K) -> K::Output {
    assert!(level.is_supported(), "this CPU has no {level} instructions");
    #[cfg(target_arch = "x86_64")]
    {
        /// The kernel compiled for AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<K: Kernel>(kernel: K) -> K::Output {
            // SAFETY: the CPU has AVX2 and FMA (checked by `dispatch`).
            unsafe { kernel.run::<Avx2>() }
        }
        /// The kernel compiled for AVX-512.
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        unsafe fn avx512<K: Kernel>(kernel: K) -> K::Output {
            // SAFETY: the CPU has AVX-512 (checked by `dispatch`).
            unsafe { kernel.run::<Avx512>() }
        }
        match level {
            // SAFETY: `level` is supported (asserted above).
            Level::Avx512 | Level::Avx512Bf16 => unsafe { avx512(kernel) },
            // SAFETY: as above.
            Level::Avx2 => unsafe { avx2(kernel) },
            // SAFETY: portable code runs anywhere.
            Level::Portable => unsafe { kernel.run::<Portable>() },
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: portable code runs anywhere.
    unsafe {
        kernel.run::<Portable>()
    }
}

#[cfg(test)]
pub(crate) mod test_values {
    /// Deterministic values in [-1, 1).
    pub fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| {
                let x = (i.wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503))) >> 7;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Exp<'a>(&'a [f32]);

    impl Kernel for Exp<'_> {
        type Output = Vec<f32>;

        #[inline(always)]
        unsafe fn run<V: F32x>(self) -> Vec<f32> {
            let mut out = vec![0f32; self.0.len()];
            for (x, y) in self.0.chunks(V::LANES).zip(out.chunks_mut(V::LANES)) {
                // SAFETY: the level's instructions (the trait's contract); `x.len()` values.
                unsafe {
                    let v = if x.len() == V::LANES {
                        V::load(x.as_ptr())
                    } else {
                        V::load_first(x.as_ptr(), x.len())
                    };
                    v.exp().store_first(y.as_mut_ptr(), y.len());
                }
            }
            out
        }
    }

    /// Every vector operation `exp` uses, on every level this CPU has, against libm.
    #[test]
    fn exp_matches_libm_at_every_level() {
        let x: Vec<f32> = (0..2001).map(|i| (i as f32 - 1000.0) / 11.0).collect();
        for level in Level::supported() {
            let got = dispatch(level, Exp(&x));
            for (&x, &got) in x.iter().zip(&got) {
                let want = x.clamp(-87.0, 88.0).exp();
                assert!(
                    (got - want).abs() <= 3e-7 * want,
                    "{level}: exp({x}) = {got}, libm {want}"
                );
            }
        }
    }
}

#[cfg(test)]
mod normalising {
    use super::*;

    /// A peaked distribution over a vocabulary: a few likely tokens, tens of thousands of
    /// unlikely ones whose mass is a fair share of the total.
    fn peaked() -> Vec<f32> {
        (0..50_257u32)
            .map(|i| {
                if i % 10_000 == 7 {
                    12.0
                } else {
                    (i % 97) as f32 * 0.01
                }
            })
            .collect()
    }

    #[test]
    fn log_sum_exp_is_exact_to_f32_on_a_vocabulary() {
        let values = peaked();
        let exact = values.iter().map(|&v| f64::from(v).exp()).sum::<f64>().ln();
        assert!((log_sum_exp(&values) - exact).abs() < 1e-9);
        let naive = values.iter().map(|&v| (v - 12.0).exp()).sum::<f32>().ln() + 12.0;
        assert!(
            (f64::from(naive) - exact).abs() > 1e-5,
            "the f32 sum this guards against is accurate here: the test shows nothing"
        );
    }

    #[test]
    fn softmax_sums_to_one() {
        let total: f64 = softmax(&peaked()).iter().map(|&p| f64::from(p)).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
    }
}
