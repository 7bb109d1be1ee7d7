//! Dot products of weight rows with activation rows: GPT-2's LM head (one per vocabulary
//! row) and attention's scores, where the weights are stored one output per row.

use crate::gemm::Weight;
use crate::{dispatch, F32x, Kernel, Level};

/// The dot products of `S` weight rows with `R` activation rows, one accumulator each: per
/// vector of columns, `S + R` loads serve `S x R` multiply-adds. Every row must be at least
/// as long as the first activation row, whose length is the one summed over.
///
/// # Safety
/// The CPU must have `V`'s instructions.
#[inline(always)]
pub unsafe fn dots<V: F32x, W: Weight, const S: usize, const R: usize>(
    e: [&[W]; S],
    x: [&[f32]; R],
) -> [[f32; R]; S] {
    let len = x.first().map_or(0, |row| row.len());
    assert!(e.iter().all(|row| row.len() >= len) && x.iter().all(|row| row.len() >= len));
    let vectors = len / V::LANES * V::LANES;
    // Plain loops rather than closures: a closure is a function of its own, compiled without
    // the level's instructions, and the vector operations in it become calls.
    let mut totals = [[0f32; R]; S];
    // SAFETY: the caller's level; every access is one vector at `j < vectors <= len`, within
    // each weight and activation row (asserted).
    unsafe {
        let mut acc = [[V::zero(); R]; S];
        for j in (0..vectors).step_by(V::LANES) {
            let mut xs = [V::zero(); R];
            for (xv, row) in xs.iter_mut().zip(&x) {
                *xv = V::load(row.as_ptr().add(j));
            }
            for (acc, row) in acc.iter_mut().zip(&e) {
                let w = W::load::<V>(row.as_ptr().add(j));
                for (acc, &xv) in acc.iter_mut().zip(&xs) {
                    *acc = w.mul_add(xv, *acc);
                }
            }
        }
        for (totals, acc) in totals.iter_mut().zip(&acc) {
            for (total, v) in totals.iter_mut().zip(acc) {
                *total = v.sum();
            }
        }
    }
    for (totals, weights) in totals.iter_mut().zip(&e) {
        for (total, row) in totals.iter_mut().zip(&x) {
            *total += weights[vectors..len]
                .iter()
                .zip(&row[vectors..len])
                .map(|(a, b)| a.to_f32() * b)
                .sum::<f32>();
        }
    }
    totals
}

struct Dot<'a>(&'a [f32], &'a [f32]);

impl Kernel for Dot<'_> {
    type Output = f32;

    #[inline(always)]
    unsafe fn run<V: F32x>(self) -> f32 {
        // SAFETY: the level's instructions (the trait's contract).
        let [[total]] = unsafe { dots::<V, f32, 1, 1>([self.0], [self.1]) };
        total
    }
}

/// `a . b` for two rows of one length, in vectors (a plain sum is one long chain of dependent
/// additions: the compiler may not reorder float additions).
pub fn dot(level: Level, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of rows of different lengths");
    dispatch(level, Dot(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::values;

    #[test]
    fn dot_matches_a_plain_sum_at_every_level() {
        for level in Level::supported() {
            for len in [0, 1, 7, 8, 15, 16, 17, 64, 100, 768] {
                let (a, b) = (values(len, 1), values(len, 2));
                let want: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
                let got = dot(level, &a, &b);
                assert!(
                    (f64::from(got) - want).abs() < 1e-4,
                    "{level} length {len}: {got} vs {want}"
                );
            }
        }
    }
}
