//! One completion, token by token: prefill the prompt, then sample, check the stop strings
//! (matched across token boundaries, the text cut before the stop), and feed the token back.
//! A [`Generation`] is an iterator of [`Step`]s, so a caller can stream each token or collect
//! them, and stops pulling the moment its client goes away.

use crate::gpt2::{Gpt2, KvCache};
use crate::sampling::{log_softmax, Sampler, SamplingParams};
use crate::tokenizer::{Gpt2Tokenizer, StreamDecoder};
use crate::TextError;

/// What a completion asks for besides its prompt.
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Up to 4 strings; the completion ends before the first one that appears.
    pub stop: Vec<String>,
    /// How many alternatives to report with each token's log-probability (`None`: no logprobs).
    pub logprobs: Option<usize>,
}

/// A token with its log-probability under the model and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// One generated token and the text it releases (empty while a character or a possible stop
/// string is incomplete).
#[derive(Debug, Clone)]
pub struct Step {
    pub token: u32,
    pub text: String,
    pub logprob: Option<TokenLogprob>,
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop string or the end-of-text token.
    Stop,
    /// `max_tokens` or the end of the context.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// A completion in progress.
pub struct Generation<'a> {
    model: &'a Gpt2,
    tokenizer: &'a Gpt2Tokenizer,
    options: GenerateOptions,
    cache: KvCache,
    sampler: Sampler,
    /// Logits for the next position.
    logits: Vec<f32>,
    decoder: StreamDecoder,
    stops: StopMatcher,
    generated: usize,
    finish: Option<FinishReason>,
}

impl<'a> Generation<'a> {
    /// Runs the prompt through the model; answers the generation and, when `options.logprobs`
    /// is set, the log-probability of each prompt token after the first (what `echo` scores).
    pub fn start(
        model: &'a Gpt2,
        tokenizer: &'a Gpt2Tokenizer,
        prompt: &[u32],
        options: GenerateOptions,
    ) -> Result<(Self, Vec<TokenLogprob>), TextError> {
        if prompt.is_empty() {
            return Err(TextError::Tokenizer("the prompt has no tokens".into()));
        }
        let mut cache = KvCache::default();
        let hidden = model.forward(prompt, &mut cache)?;
        // The head runs on every position only when the prompt's logprobs are asked for.
        let scored = match options.logprobs {
            Some(_) => hidden,
            None => hidden.narrow(0, prompt.len() - 1, 1)?,
        };
        let rows: Vec<Vec<f32>> = model.logits(&scored)?.to_vec2()?;
        let prompt_logprobs = match options.logprobs {
            Some(top) => rows
                .iter()
                .zip(&prompt[1..])
                .map(|(row, &token)| token_logprob(row, token, top))
                .collect(),
            None => Vec::new(),
        };
        let logits = rows.into_iter().next_back().unwrap_or_default();
        let sampler = Sampler::new(options.sampling.clone());
        let stops = StopMatcher::new(options.stop.clone());
        let finish = (options.max_tokens == 0).then_some(FinishReason::Length);
        let generation = Self {
            model,
            tokenizer,
            options,
            cache,
            sampler,
            logits,
            decoder: StreamDecoder::default(),
            stops,
            generated: 0,
            finish,
        };
        Ok((generation, prompt_logprobs))
    }

    /// Why it ended, once the iterator is exhausted.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Samples the next token from the current logits and releases its text. Answers the step
    /// and, unless the generation just ended, the token the model must read next: the caller
    /// runs it (alone with [`Gpt2::forward`], or batched with other generations through
    /// [`Gpt2::decode_batch`] on [`Generation::cache_mut`]) and hands the logits to
    /// [`Generation::set_logits`].
    pub fn advance(&mut self) -> (Step, Option<u32>) {
        let token = self.sampler.sample(&self.logits);
        self.sampler.observe(token);
        self.generated += 1;
        let logprob = self
            .options
            .logprobs
            .map(|top| token_logprob(&self.logits, token, top));
        if self.tokenizer.token_bytes(token) == crate::END_OF_TEXT.as_bytes() {
            self.finish = Some(FinishReason::Stop);
            let text = self.stops.finish(std::mem::take(&mut self.decoder).finish());
            return (Step { token, text, logprob }, None);
        }
        let released = self.decoder.push(self.tokenizer.token_bytes(token));
        let (mut text, stopped) = self.stops.push(&released);
        if stopped {
            self.finish = Some(FinishReason::Stop);
        } else if self.generated >= self.options.max_tokens
            || self.cache.len() >= self.model.config().n_positions
        {
            self.finish = Some(FinishReason::Length);
            text.push_str(&self.stops.finish(std::mem::take(&mut self.decoder).finish()));
        }
        let next = self.finish.is_none().then_some(token);
        (Step { token, text, logprob }, next)
    }

    /// The generation's KV cache, for a batched decode step.
    pub fn cache_mut(&mut self) -> &mut KvCache {
        &mut self.cache
    }

    /// The logits for the next position, after the token [`Generation::advance`] asked for.
    pub fn set_logits(&mut self, logits: Vec<f32>) {
        self.logits = logits;
    }

    /// Ends the generation (its model step failed).
    pub fn abort(&mut self) {
        self.finish = Some(FinishReason::Stop);
    }

    fn step(&mut self) -> Result<Step, TextError> {
        let (step, next) = self.advance();
        if let Some(token) = next {
            let hidden = self.model.forward(&[token], &mut self.cache)?;
            self.logits = self.model.logits(&hidden)?.squeeze(0)?.to_vec1()?;
        }
        Ok(step)
    }

    /// True once the generation has ended.
    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }
}

impl Iterator for Generation<'_> {
    type Item = Result<Step, TextError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finish.is_some() {
            return None;
        }
        let step = self.step();
        if step.is_err() {
            self.finish = Some(FinishReason::Stop);
        }
        Some(step)
    }
}

fn token_logprob(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let log_probs = log_softmax(logits);
    let mut order: Vec<u32> = (0..log_probs.len() as u32).collect();
    let top = top.min(order.len());
    if top > 0 {
        order.select_nth_unstable_by(top - 1, |&a, &b| {
            log_probs[b as usize].total_cmp(&log_probs[a as usize])
        });
    }
    order.truncate(top);
    order.sort_by(|&a, &b| log_probs[b as usize].total_cmp(&log_probs[a as usize]));
    TokenLogprob {
        token,
        logprob: log_probs[token as usize],
        top: order.into_iter().map(|t| (t, log_probs[t as usize])).collect(),
    }
}

/// Finds stop strings in streamed text, holding back any tail that could begin one.
#[derive(Debug, Default)]
struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// The text that is safe to release, and whether a stop string was reached (the text is
    /// then cut before it).
    fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let released = self.held[..at].to_string();
            self.held.clear();
            return (released, true);
        }
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let released = self.held[..keep].to_string();
        self.held.drain(..keep);
        (released, false)
    }

    /// Everything still held, plus a final piece of text, at the end of the completion.
    fn finish(&mut self, tail: String) -> String {
        let (mut text, stopped) = self.push(&tail);
        if !stopped {
            text.push_str(&std::mem::take(&mut self.held));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut matcher = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for piece in pieces {
            let (text, stopped) = matcher.push(piece);
            out.push_str(&text);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&matcher.finish(String::new()));
        (out, false)
    }

    #[test]
    fn stop_strings_match_across_pieces_and_cut_before_the_stop() {
        assert_eq!(
            run(&["\n\n"], &["Hello", " world", "\n", "\n", "more"]),
            ("Hello world".into(), true)
        );
        assert_eq!(run(&["END"], &["abc E", "N", "D tail"]), ("abc ".into(), true));
        assert_eq!(run(&["xyz", "b"], &["aab"]), ("aa".into(), true));
    }

    #[test]
    fn partial_stops_are_released_when_they_do_not_complete() {
        assert_eq!(run(&["END"], &["abc E", "N", "x"]), ("abc ENx".into(), false));
        assert_eq!(run(&["END"], &["abc EN"]), ("abc EN".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn held_text_is_not_released_early() {
        let mut matcher = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(matcher.push("go ST"), ("go ".into(), false));
        assert_eq!(matcher.push("O"), ("".into(), false));
        assert_eq!(matcher.push("P!"), ("".into(), true));
    }
}
