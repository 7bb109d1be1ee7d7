//! One completion, token by token: prefill the prompt, then sample, check the stop strings
//! (matched across token boundaries, the text cut before the stop), and feed the token back.
//! A [`Generation`] is an iterator of [`Step`]s, so a caller can stream each token or collect
//! them, and stops pulling the moment its client goes away.

use crate::attention::KvCache;
use crate::gpt2::Gpt2;
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
    prompt: Vec<u32>,
    /// Prompt tokens the model has read (into `cache`).
    prompt_read: usize,
    /// The log-probabilities of the prompt tokens scored so far, when asked for.
    prompt_logprobs: Vec<TokenLogprob>,
    /// Logits for the next position.
    logits: Vec<f32>,
    decoder: StreamDecoder,
    stops: StopMatcher,
    generated: usize,
    finish: Option<FinishReason>,
}

impl<'a> Generation<'a> {
    /// A generation that has yet to read its prompt: a batching caller runs
    /// [`Generation::unread_prompt`] (whole, or a piece at a time) through
    /// [`Gpt2::extend_batch`] on [`Generation::cache_mut`] and hands the logits to
    /// [`Generation::prompt_read`]. Refuses an empty prompt, one longer than the context, and
    /// tokens outside the vocabulary, so that a batch never fails for one bad prompt.
    pub fn new(
        model: &'a Gpt2,
        tokenizer: &'a Gpt2Tokenizer,
        prompt: Vec<u32>,
        options: GenerateOptions,
    ) -> Result<Self, TextError> {
        if prompt.is_empty() {
            return Err(TextError::Tokenizer("the prompt has no tokens".into()));
        }
        model.check(&prompt, 0)?;
        let sampler = Sampler::new(options.sampling.clone());
        let stops = StopMatcher::new(options.stop.clone());
        let finish = (options.max_tokens == 0).then_some(FinishReason::Length);
        // Room for the whole generation at once, up to the context: grown by doubling, the
        // cache of a 128-token prompt was copied to fresh pages at the first generated token.
        let mut cache = KvCache::default();
        cache.reserve(
            prompt
                .len()
                .saturating_add(options.max_tokens)
                .min(model.config().n_positions),
        );
        Ok(Self {
            model,
            tokenizer,
            options,
            cache,
            sampler,
            prompt,
            prompt_read: 0,
            prompt_logprobs: Vec::new(),
            logits: Vec::new(),
            decoder: StreamDecoder::default(),
            stops,
            generated: 0,
            finish,
        })
    }

    /// Runs the prompt through the model; answers the generation and, when `options.logprobs`
    /// is set, the log-probability of each prompt token after the first (what `echo` scores).
    pub fn start(
        model: &'a Gpt2,
        tokenizer: &'a Gpt2Tokenizer,
        prompt: &[u32],
        options: GenerateOptions,
    ) -> Result<(Self, Vec<TokenLogprob>), TextError> {
        let mut generation = Self::new(model, tokenizer, prompt.to_vec(), options)?;
        let rows = match generation.scores_prompt() {
            true => model.logits(&model.forward(prompt, &mut generation.cache)?)?,
            false => model.next_logits(prompt, &mut generation.cache)?,
        }
        .to_vec2()?;
        let logprobs = generation.prompt_read(prompt.len(), rows).unwrap_or_default();
        Ok((generation, logprobs))
    }

    /// The prompt tokens the model has yet to read (none once it has started generating).
    pub fn unread_prompt(&self) -> &[u32] {
        &self.prompt[self.prompt_read..]
    }

    /// Whether the prompt's own log-probabilities are asked for: [`Generation::prompt_read`]
    /// then needs the logits of every prompt position, otherwise only those of the last.
    pub fn scores_prompt(&self) -> bool {
        self.options.logprobs.is_some()
    }

    /// The model has read the next `count` prompt tokens into the cache; `logits` holds the
    /// rows of those positions when [`Generation::scores_prompt`], otherwise the last
    /// position's row once the prompt is complete (and may be empty before). Answers the
    /// prompt's log-probabilities (empty unless asked for) once the whole prompt is read.
    pub fn prompt_read(&mut self, count: usize, logits: Vec<Vec<f32>>) -> Option<Vec<TokenLogprob>> {
        let first = self.prompt_read;
        self.prompt_read = (first + count).min(self.prompt.len());
        if let Some(top) = self.options.logprobs {
            // The row at position p scores prompt token p + 1.
            for (row, &token) in logits
                .iter()
                .zip(self.prompt.get(first + 1..).unwrap_or_default())
            {
                self.prompt_logprobs.push(token_logprob(row, token, top));
            }
        }
        if self.prompt_read < self.prompt.len() {
            return None;
        }
        self.logits = logits.into_iter().next_back().unwrap_or_default();
        Some(std::mem::take(&mut self.prompt_logprobs))
    }

    /// Why it ended, once the iterator is exhausted.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Samples the next token from the current logits and releases its text. Answers the step
    /// and, unless the generation just ended, the token the model must read next: the caller
    /// runs it (alone with [`Gpt2::forward`], or batched with other generations through
    /// [`Gpt2::extend_batch`] on [`Generation::cache_mut`]) and hands the logits to
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
            self.logits = self
                .model
                .next_logits(&[token], &mut self.cache)?
                .squeeze(0)?
                .to_vec1()?;
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
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// The text that is safe to release, and whether a stop string was reached (the text is
    /// then cut before it).
    pub fn push(&mut self, text: &str) -> (String, bool) {
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
    pub fn finish(&mut self, tail: String) -> String {
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

    /// Found by the `stop_matching` fuzz target (reduced): a short stop string completes while
    /// a longer one that began earlier is still pending. Generation ends at the piece that
    /// completes a stop, so the longer one never completes and the text ends at the short one.
    #[test]
    fn a_stop_completed_inside_a_pending_longer_one_ends_the_text() {
        assert_eq!(
            run(&["\0", "c\u{1}\0{"], &["]]c`\u{1}c\u{1}\0", "{"]),
            ("]]c`\u{1}c\u{1}".into(), true)
        );
        assert_eq!(run(&["b", "xaby"], &["xab", "y"]), ("xa".into(), true));
    }

    #[test]
    fn held_text_is_not_released_early() {
        let mut matcher = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(matcher.push("go ST"), ("go ".into(), false));
        assert_eq!(matcher.push("O"), ("".into(), false));
        assert_eq!(matcher.push("P!"), ("".into(), true));
    }
}
