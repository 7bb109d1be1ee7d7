//! The vector type each level's kernels are written against, so that a kernel is written once,
//! generic over [`F32x`], and compiled once per level by [`crate::dispatch`].
//!
//! Every method is `#[inline(always)]` and `unsafe`: the intrinsics behind them may only run on
//! a CPU that has their instructions, which [`crate::dispatch`] guarantees by calling the kernel
//! from a function compiled for that level (and inlining lets the compiler keep the values in
//! registers). A kernel's `run` must be `#[inline(always)]` too, or these become calls.

use half::bf16;

/// A vector of f32 lanes with the operations the kernels use.
///
/// # Safety
/// Implementations' methods may use instructions of their level only. Every method has one
/// contract: the CPU must have those instructions (callers hold a [`crate::Level`] that
/// includes them, which [`crate::dispatch`] checks), and a method that takes a pointer must be
/// able to read or write the values its documentation names there.
#[allow(clippy::missing_safety_doc)]
pub unsafe trait F32x: Copy {
    /// Lanes per vector.
    const LANES: usize;
    /// The level whose instructions the methods use: the portable vector has as many lanes
    /// as AVX2's, so a kernel that takes a path of one level's own asks this, not `LANES`.
    const LEVEL: crate::Level;

    /// All lanes zero.
    unsafe fn zero() -> Self;
    /// All lanes `x`.
    unsafe fn splat(x: f32) -> Self;
    /// `LANES` values from `p`, which must be readable.
    unsafe fn load(p: *const f32) -> Self;
    /// The first `n <= LANES` values from `p` (only those are read), zeros after.
    unsafe fn load_first(p: *const f32, n: usize) -> Self;
    /// `LANES` bf16 values from `p`, widened (bf16 is the top half of an f32).
    unsafe fn load_bf16(p: *const bf16) -> Self;
    /// Writes the lanes to `p`.
    unsafe fn store(self, p: *mut f32);
    /// Writes the first `n <= LANES` lanes to `p` (only those are written).
    unsafe fn store_first(self, p: *mut f32, n: usize);
    /// `self * b + c`, fused where the level has FMA.
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    /// `c - self * b`, fused where the level has FMA.
    unsafe fn neg_mul_add(self, b: Self, c: Self) -> Self;
    unsafe fn add(self, b: Self) -> Self;
    unsafe fn sub(self, b: Self) -> Self;
    unsafe fn mul(self, b: Self) -> Self;
    unsafe fn div(self, b: Self) -> Self;
    unsafe fn max(self, b: Self) -> Self;
    unsafe fn min(self, b: Self) -> Self;
    /// Each lane rounded to the nearest integer (ties to even).
    unsafe fn round(self) -> Self;
    /// `2^n` for lanes holding integers `n` in [-126, 127].
    unsafe fn pow2(self) -> Self;
    /// The sum of the lanes.
    unsafe fn sum(self) -> f32;

    /// The first `n <= LANES` values from `p`, zeros after: a full load when `n` is `LANES`.
    #[inline(always)]
    unsafe fn load_part(p: *const f32, n: usize) -> Self {
        // SAFETY: the caller vouches for `n` readable values.
        unsafe {
            if n == Self::LANES {
                Self::load(p)
            } else {
                Self::load_first(p, n)
            }
        }
    }

    /// Writes the first `n <= LANES` lanes to `p`: a full store when `n` is `LANES`.
    #[inline(always)]
    unsafe fn store_part(self, p: *mut f32, n: usize) {
        // SAFETY: the caller vouches for `n` writable values.
        unsafe {
            if n == Self::LANES {
                self.store(p)
            } else {
                self.store_first(p, n)
            }
        }
    }

    /// `e^x` to about one part in 10^7 (Cephes' `expf`): `x = n ln 2 + r`, a polynomial for
    /// `e^r`, and `2^n` put into the exponent. Inputs are clamped to [-87, 88], where `2^n`
    /// stays a normal number.
    #[inline(always)]
    unsafe fn exp(self) -> Self {
        // SAFETY: the caller holds this level (the trait's contract).
        unsafe {
            let x = self.max(Self::splat(-87.0)).min(Self::splat(88.0));
            let n = x.mul(Self::splat(std::f32::consts::LOG2_E)).round();
            // ln 2 in two parts, so that `n ln 2` is subtracted without losing bits.
            let r = n.neg_mul_add(Self::splat(0.693_359_4), x);
            let r = n.neg_mul_add(Self::splat(-2.121_944_4e-4), r);
            let mut p = Self::splat(1.987_569_1e-4);
            for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
                p = p.mul_add(r, Self::splat(c));
            }
            let p = p.mul_add(r.mul(r), r.add(Self::splat(1.0)));
            p.mul(n.pow2())
        }
    }
}

/// Eight lanes in plain Rust, for CPUs without AVX2: the compiler vectorises what it can for
/// the build's baseline. Multiply-adds are not fused (a fused one is a library call there).
#[derive(Clone, Copy)]
pub struct Portable([f32; 8]);

impl Portable {
    #[inline(always)]
    fn map(self, f: impl Fn(f32) -> f32) -> Self {
        Portable(self.0.map(f))
    }

    #[inline(always)]
    fn zip(self, b: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        Portable(std::array::from_fn(|i| f(self.0[i], b.0[i])))
    }
}

// SAFETY: plain Rust, no instruction beyond the baseline.
unsafe impl F32x for Portable {
    const LANES: usize = 8;
    const LEVEL: crate::Level = crate::Level::Portable;

    #[inline(always)]
    unsafe fn zero() -> Self {
        Portable([0.0; 8])
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Portable([x; 8])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller vouches for eight readable values.
        Portable(unsafe { p.cast::<[f32; 8]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> Self {
        // SAFETY: the caller vouches for `n` readable values.
        Portable(std::array::from_fn(|i| {
            if i < n {
                unsafe { *p.add(i) }
            } else {
                0.0
            }
        }))
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const bf16) -> Self {
        // SAFETY: the caller vouches for eight readable values.
        Portable(std::array::from_fn(|i| unsafe { *p.add(i) }.to_f32()))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller vouches for eight writable values.
        unsafe { p.cast::<[f32; 8]>().write_unaligned(self.0) }
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, n: usize) {
        for (i, &value) in self.0[..n].iter().enumerate() {
            // SAFETY: the caller vouches for `n` writable values.
            unsafe { p.add(i).write(value) }
        }
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        Portable(std::array::from_fn(|i| self.0[i] * b.0[i] + c.0[i]))
    }
    #[inline(always)]
    unsafe fn neg_mul_add(self, b: Self, c: Self) -> Self {
        Portable(std::array::from_fn(|i| c.0[i] - self.0[i] * b.0[i]))
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        self.zip(b, |x, y| x + y)
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        self.zip(b, |x, y| x - y)
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        self.zip(b, |x, y| x * y)
    }
    #[inline(always)]
    unsafe fn div(self, b: Self) -> Self {
        self.zip(b, |x, y| x / y)
    }
    #[inline(always)]
    unsafe fn max(self, b: Self) -> Self {
        // As `maxps`: the second operand where either is NaN.
        self.zip(b, |x, y| if x > y { x } else { y })
    }
    #[inline(always)]
    unsafe fn min(self, b: Self) -> Self {
        self.zip(b, |x, y| if x < y { x } else { y })
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        self.map(f32::round_ties_even)
    }
    #[inline(always)]
    unsafe fn pow2(self) -> Self {
        self.map(|n| f32::from_bits(((n as i32 + 127) as u32) << 23))
    }
    #[inline(always)]
    unsafe fn sum(self) -> f32 {
        // Pairwise, as the vector levels add their halves.
        let q: [f32; 4] = std::array::from_fn(|i| self.0[i] + self.0[i + 4]);
        (q[0] + q[2]) + (q[1] + q[3])
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::bf16;

    use super::F32x;

    /// Eight lanes of AVX2 with FMA.
    #[derive(Clone, Copy)]
    pub struct Avx2(pub(crate) __m256);

    /// `n < 8` lanes' mask for AVX2's masked moves.
    #[inline(always)]
    unsafe fn first_lanes(n: usize) -> __m256i {
        // SAFETY: register operations of the caller's level.
        unsafe {
            let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), index)
        }
    }

    // SAFETY: every method uses AVX, AVX2 or FMA only; `dispatch` calls them at Avx2 or above.
    unsafe impl F32x for Avx2 {
        const LANES: usize = 8;
        const LEVEL: crate::Level = crate::Level::Avx2;

        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { Avx2(_mm256_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            unsafe { Avx2(_mm256_set1_ps(x)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { Avx2(_mm256_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> Self {
            unsafe { Avx2(_mm256_maskload_ps(p, first_lanes(n))) }
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const bf16) -> Self {
            unsafe {
                let raw = _mm_loadu_si128(p.cast());
                Avx2(_mm256_castsi256_ps(_mm256_slli_epi32::<16>(
                    _mm256_cvtepu16_epi32(raw),
                )))
            }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn store_first(self, p: *mut f32, n: usize) {
            unsafe { _mm256_maskstore_ps(p, first_lanes(n), self.0) }
        }
        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            unsafe { Avx2(_mm256_fmadd_ps(self.0, b.0, c.0)) }
        }
        #[inline(always)]
        unsafe fn neg_mul_add(self, b: Self, c: Self) -> Self {
            unsafe { Avx2(_mm256_fnmadd_ps(self.0, b.0, c.0)) }
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            unsafe { Avx2(_mm256_add_ps(self.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn sub(self, b: Self) -> Self {
            unsafe { Avx2(_mm256_sub_ps(self.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn mul(self, b: Self) -> Self {
            unsafe { Avx2(_mm256_mul_ps(self.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn div(self, b: Self) -> Self {
            unsafe { Avx2(_mm256_div_ps(self.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn max(self, b: Self) -> Self {
            unsafe { Avx2(_mm256_max_ps(self.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn min(self, b: Self) -> Self {
            unsafe { Avx2(_mm256_min_ps(self.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn round(self) -> Self {
            unsafe { Avx2(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(self.0)) }
        }
        #[inline(always)]
        unsafe fn pow2(self) -> Self {
            unsafe {
                let biased = _mm256_add_epi32(_mm256_cvtps_epi32(self.0), _mm256_set1_epi32(127));
                Avx2(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased)))
            }
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            unsafe {
                let half = _mm_add_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps::<1>(self.0));
                let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
                _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)))
            }
        }
    }

    /// Sixteen lanes of AVX-512 (F, BW, DQ, VL) with FMA.
    #[derive(Clone, Copy)]
    pub struct Avx512(pub(crate) __m512);

    #[inline(always)]
    fn first_mask(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    // SAFETY: every method uses AVX-512 F/BW/DQ/VL only; `dispatch` calls them at Avx512 or above.
    unsafe impl F32x for Avx512 {
        const LANES: usize = 16;
        const LEVEL: crate::Level = crate::Level::Avx512;

        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { Avx512(_mm512_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            unsafe { Avx512(_mm512_set1_ps(x)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { Avx512(_mm512_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> Self {
            unsafe { Avx512(_mm512_maskz_loadu_ps(first_mask(n), p)) }
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const bf16) -> Self {
            unsafe {
                let raw = _mm256_loadu_si256(p.cast());
                Avx512(_mm512_castsi512_ps(_mm512_slli_epi32::<16>(
                    _mm512_cvtepu16_epi32(raw),
                )))
            }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn store_first(self, p: *mut f32, n: usize) {
            unsafe { _mm512_mask_storeu_ps(p, first_mask(n), self.0) }
        }
        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            unsafe { Avx512(_mm512_fmadd_ps(self.0, b.0, c.0)) }
        }
        #[inline(always)]
        unsafe fn neg_mul_add(self, b: Self, c: Self) -> Self {
            unsafe { Avx512(_mm512_fnmadd_ps(self.0, b.0, c.0)) }
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            unsafe { Avx512(_mm512_add_ps(self.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn sub(self, b: Self) -> Self {
            unsafe { Avx512(_mm512_sub_ps(self.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn mul(self, b: Self) -> Self {
            unsafe { Avx512(_mm512_mul_ps(self.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn div(self, b: Self) -> Self {
            unsafe { Avx512(_mm512_div_ps(self.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn max(self, b: Self) -> Self {
            unsafe { Avx512(_mm512_max_ps(self.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn min(self, b: Self) -> Self {
            unsafe { Avx512(_mm512_min_ps(self.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn round(self) -> Self {
            unsafe {
                Avx512(_mm512_roundscale_ps::<
                    { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                >(self.0))
            }
        }
        #[inline(always)]
        unsafe fn pow2(self) -> Self {
            unsafe {
                let biased = _mm512_add_epi32(_mm512_cvtps_epi32(self.0), _mm512_set1_epi32(127));
                Avx512(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased)))
            }
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            unsafe {
                let half = _mm256_add_ps(
                    _mm512_castps512_ps256(self.0),
                    _mm512_extractf32x8_ps::<1>(self.0),
                );
                Avx2(half).sum()
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};
