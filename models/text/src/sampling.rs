//! Choosing the next token: greedy or sampled, with OpenAI's penalties and logit bias and the
//! common extensions (top-k, top-p, repetition penalty), from a seeded generator per sequence.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use simd::log_sum_exp;

/// How one sequence picks its tokens; OpenAI's completion parameters plus `top_k` and
/// `repetition_penalty`.
#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 is greedy (argmax).
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1: all).
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Subtracted once from the logit of every token already present.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence.
    pub frequency_penalty: f32,
    /// CTRL's penalty (1: none): positive logits of present tokens are divided by it,
    /// negative ones multiplied.
    pub repetition_penalty: f32,
    /// Added to a token's logit before anything else.
    pub logit_bias: HashMap<u32, f32>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: HashMap::new(),
            seed: 0,
        }
    }
}

/// The per-sequence sampler: parameters, the generator, and the counts of tokens seen.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    counts: HashMap<u32, u32>,
}

impl Sampler {
    /// `history` is what the penalties count from the start (the prompt for repetition, as
    /// Hugging Face does; OpenAI's presence and frequency penalties count generated tokens only,
    /// so callers pass an empty history and [`Sampler::observe`] each new token).
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self {
            params,
            rng,
            counts: HashMap::new(),
        }
    }

    /// Counts a token for the penalties.
    pub fn observe(&mut self, token: u32) {
        *self.counts.entry(token).or_default() += 1;
    }

    /// The logits after bias and penalties: what the choice is made from.
    pub fn adjust(&self, logits: &mut [f32]) {
        for (&token, &bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(token as usize) {
                *l += bias;
            }
        }
        for (&token, &count) in &self.counts {
            let Some(l) = logits.get_mut(token as usize) else {
                continue;
            };
            if self.params.repetition_penalty != 1.0 {
                *l = if *l > 0.0 {
                    *l / self.params.repetition_penalty
                } else {
                    *l * self.params.repetition_penalty
                };
            }
            *l -= self.params.presence_penalty + self.params.frequency_penalty * count as f32;
        }
    }

    /// Picks the next token from raw logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let mut adjusted = logits.to_vec();
        self.adjust(&mut adjusted);
        if self.params.temperature <= 0.0 {
            return argmax(&adjusted);
        }
        let mut candidates: Vec<(u32, f32)> = adjusted
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l / self.params.temperature))
            .collect();
        // Only top-k and top-p need the candidates in order; a partial selection finds the k
        // best without sorting the whole vocabulary on every token.
        let best_first = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if self.params.top_k > 0 && self.params.top_k < candidates.len() {
            candidates.select_nth_unstable_by(self.params.top_k - 1, best_first);
            candidates.truncate(self.params.top_k);
        }
        if self.params.top_k > 0 || self.params.top_p < 1.0 {
            candidates.sort_unstable_by(best_first);
        }
        let max = candidates.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<f32> = candidates.iter().map(|(_, l)| (l - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.params.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    cumulative += p;
                    cumulative >= self.params.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            let total: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let mut draw: f32 = self.rng.random();
        for (p, (token, _)) in probs.iter().zip(&candidates) {
            if draw < *p {
                return *token;
            }
            draw -= p;
        }
        candidates[probs.len() - 1].0
    }
}

/// Index of the largest value (the first of equals).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Natural-log softmax.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let log_total = log_sum_exp(logits);
    logits
        .iter()
        .map(|&l| (f64::from(l) - log_total) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut sampler = Sampler::new(SamplingParams {
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(sampler.sample(&logits()), 1);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_other_tokens() {
        let run = |seed| {
            let mut sampler = Sampler::new(SamplingParams {
                seed,
                ..Default::default()
            });
            (0..64).map(|_| sampler.sample(&logits())).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_and_top_p_restrict_the_choice() {
        let mut top_k = Sampler::new(SamplingParams {
            top_k: 2,
            seed: 1,
            ..Default::default()
        });
        assert!((0..200)
            .map(|_| top_k.sample(&logits()))
            .all(|t| t == 1 || t == 4));
        let mut top_p = Sampler::new(SamplingParams {
            top_p: 0.01,
            seed: 1,
            ..Default::default()
        });
        assert!((0..200).map(|_| top_p.sample(&logits())).all(|t| t == 1));
    }

    #[test]
    fn bias_and_penalties_move_logits() {
        let mut bias = HashMap::new();
        bias.insert(3, 100.0);
        let mut sampler = Sampler::new(SamplingParams {
            temperature: 0.0,
            logit_bias: bias,
            ..Default::default()
        });
        assert_eq!(sampler.sample(&logits()), 3);

        let mut sampler = Sampler::new(SamplingParams {
            temperature: 0.0,
            presence_penalty: 0.5,
            frequency_penalty: 0.1,
            ..Default::default()
        });
        sampler.observe(1);
        sampler.observe(1);
        let mut adjusted = logits();
        sampler.adjust(&mut adjusted);
        assert!((adjusted[1] - (3.0 - 0.5 - 0.2)).abs() < 1e-6);
        assert_eq!(sampler.sample(&logits()), 4);

        let mut sampler = Sampler::new(SamplingParams {
            temperature: 0.0,
            repetition_penalty: 2.0,
            ..Default::default()
        });
        sampler.observe(1);
        assert_eq!(sampler.sample(&logits()), 4);
    }

    #[test]
    fn log_softmax_normalises() {
        let total: f32 = log_softmax(&logits()).iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
