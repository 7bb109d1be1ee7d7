//! GPT-2 against Hugging Face `transformers` on the committed tiny fixtures (the real
//! vocabulary; random weights, and weights trained briefly, whose peaked distributions are
//! where normalising over 50,257 tokens goes wrong): logits within 1e-4, prompt
//! log-probabilities within 1e-5, greedy continuations token-identical to `generate`
//! (`scripts/make_gpt2_fixtures.py` wrote the references).

use std::path::PathBuf;

use candle_core::{IndexOp, Tensor};
use serde_json::Value;
use simd::Level;
use text::sampling::{log_softmax, log_sum_exp};
use text::{GenerateOptions, Generation, Gpt2, Gpt2Tokenizer, KvCache, WeightPrecision};

/// The committed GPT-2 fixtures: random weights, and trained ones.
const FIXTURES: [&str; 2] = ["gpt2-tiny", "gpt2-tiny-trained"];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// Each fixture with its kernels for each level this CPU has, its reference and its name; f32
/// weights both as mapped from the file and packed for the kernels ([`Gpt2::pack_weights`]).
fn each_level(precision: WeightPrecision) -> impl Iterator<Item = (Gpt2, Value, &'static str)> {
    let packings: &[bool] = match precision {
        WeightPrecision::F32 => &[false, true],
        WeightPrecision::Bf16 => &[false],
    };
    FIXTURES.into_iter().flat_map(move |name| {
        Level::supported().into_iter().flat_map(move |level| {
            packings.iter().map(move |&packed| {
                eprintln!("{name}: kernels {level}, weights {precision:?}, packed: {packed}");
                let (model, reference) = load_at(name, precision, level);
                if packed {
                    model.pack_weights();
                }
                (model, reference, name)
            })
        })
    })
}

fn load_at(name: &str, precision: WeightPrecision, level: Level) -> (Gpt2, Value) {
    let dir = fixture(name);
    let model = Gpt2::load(
        &dir.join("config.json"),
        &dir.join("model.safetensors"),
        precision,
        level,
    )
    .unwrap();
    let reference =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    (model, reference)
}

fn tokens(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap() as f32)
        .collect()
}

/// The largest element-wise difference of two tensors of the same shape.
fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// The logits at every position of a prompt read from an empty cache, and those at its last.
fn prompt_logits(model: &Gpt2, prompt: &[u32]) -> (Tensor, Tensor) {
    let logits = model
        .logits(&model.forward(prompt, &mut KvCache::default()).unwrap())
        .unwrap();
    let last = logits.i(prompt.len() - 1).unwrap();
    (logits, last)
}

fn assert_close(got: f32, want: f32, what: &str) {
    assert!((got - want).abs() < 1e-4, "{what}: {got} vs transformers {want}");
}

/// bf16 dense weights, through both the streaming products (short prompts) and the GEMM path
/// (long ones): the logits move from the f32 reference by a small fraction of their spread.
#[test]
fn bf16_weights_stay_close_to_transformers() {
    for (model, reference, name) in each_level(WeightPrecision::Bf16) {
        let mut worst = 0f32;
        for case in reference["prompts"].as_array().unwrap() {
            let prompt = tokens(&case["tokens"]);
            let (_, last) = prompt_logits(&model, &prompt);
            let want = floats(&case["last_logits_at_probe"]);
            let spread =
                want.iter().fold(f32::MIN, |a, &b| a.max(b)) - want.iter().fold(f32::MAX, |a, &b| a.min(b));
            for (&index, want) in tokens(&case["probe_indices"]).iter().zip(&want) {
                let got: f32 = last.i(index as usize).unwrap().to_scalar().unwrap();
                worst = worst.max((got - want).abs() / spread);
            }
        }
        eprintln!("bf16: worst logit error {worst:.4} of the spread");
        assert!(worst < 0.02, "bf16 logits off by {worst} of their spread");
        assert!(
            worst > 0.0,
            "bf16 weights gave exactly the f32 logits: were they rounded at all?"
        );

        // Past 16 rows the products widen the weights for candle's GEMM.
        let (f32_model, _) = load_at(name, WeightPrecision::F32, model.level());
        let long: Vec<u32> = (0..40).map(|i| (i * 7919) % 50_000).collect();
        let last = |model: &Gpt2| {
            let hidden = model.forward(&long, &mut KvCache::default()).unwrap();
            model
                .logits(&hidden.i(long.len() - 1..).unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
        };
        let (got, want) = (last(&model), last(&f32_model));
        let spread: f32 = (want.max(0).unwrap() - want.min(0).unwrap())
            .unwrap()
            .to_scalar()
            .unwrap();
        let error = max_difference(&got, &want);
        eprintln!(
            "bf16, 40-token prompt: worst logit error {:.4} of the spread",
            error / spread
        );
        assert!(
            error / spread < 0.02,
            "bf16 long-prompt logits off by {} of their spread",
            error / spread
        );
    }
}

#[test]
fn logits_and_prompt_logprobs_match_transformers() {
    for (model, reference, _) in each_level(WeightPrecision::F32) {
        for case in reference["prompts"].as_array().unwrap() {
            let prompt = tokens(&case["tokens"]);
            let (logits, last) = prompt_logits(&model, &prompt);
            for (&index, want) in tokens(&case["probe_indices"])
                .iter()
                .zip(floats(&case["last_logits_at_probe"]))
            {
                let got: f32 = last.i(index as usize).unwrap().to_scalar().unwrap();
                assert_close(got, want, &format!("{prompt:?} logit {index}"));
            }
            // What the service reports: the log-probabilities `echo` and `logprobs` answer.
            let last: Vec<f32> = last.to_vec1().unwrap();
            assert_close(
                log_sum_exp(&last) as f32,
                case["last_logsumexp"].as_f64().unwrap() as f32,
                "logsumexp",
            );
            let logits: Vec<Vec<f32>> = logits.to_vec2().unwrap();
            for (i, want) in case["token_logprobs"].as_array().unwrap().iter().enumerate() {
                let got = log_softmax(&logits[i])[prompt[i + 1] as usize];
                let want = want.as_f64().unwrap();
                assert!(
                    (f64::from(got) - want).abs() < 1e-5,
                    "{prompt:?} logprob of token {}: {got} vs transformers {want}",
                    i + 1
                );
            }
        }
    }
}

#[test]
fn greedy_continuation_with_kv_cache_is_token_identical() {
    for (model, reference, _) in each_level(WeightPrecision::F32) {
        for case in reference["prompts"].as_array().unwrap() {
            let prompt = tokens(&case["tokens"]);
            let want = tokens(&case["greedy"]);
            let mut cache = KvCache::default();
            let mut next = prompt.clone();
            let mut got = Vec::new();
            while got.len() < want.len() {
                let logits = model.logits(&model.forward(&next, &mut cache).unwrap()).unwrap();
                let last = logits.i(next.len() - 1).unwrap();
                let token = last.argmax(0).unwrap().to_scalar::<u32>().unwrap();
                got.push(token);
                next = vec![token];
            }
            assert_eq!(got, want, "prompt {prompt:?}");
            assert_eq!(cache.len(), prompt.len() + want.len() - 1);
        }
    }
}

#[test]
fn incremental_forward_equals_full_forward() {
    for (model, reference, _) in each_level(WeightPrecision::F32) {
        let prompt = tokens(&reference["prompts"][0]["tokens"]);
        let full = model
            .logits(&model.forward(&prompt, &mut KvCache::default()).unwrap())
            .unwrap();
        let mut cache = KvCache::default();
        model.forward(&prompt[..3], &mut cache).unwrap();
        let rest = model
            .logits(&model.forward(&prompt[3..], &mut cache).unwrap())
            .unwrap();
        let diff: f32 = (full.i(3..).unwrap() - rest)
            .unwrap()
            .abs()
            .unwrap()
            .max_keepdim(0)
            .unwrap()
            .max(1)
            .unwrap()
            .i(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-4, "cached and uncached logits differ by {diff}");
    }
}

#[test]
fn a_batch_of_sequences_equals_each_sequence_alone() {
    for (model, reference, _) in each_level(WeightPrecision::F32) {
        let prompts: Vec<Vec<u32>> = reference["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|case| tokens(&case["tokens"]))
            .collect();
        let mut batch: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        batch.insert(1, &[]);
        let hidden = model.forward_batch(&batch).unwrap();
        assert_eq!(hidden.len(), batch.len());
        assert_eq!(hidden[1].dims(), [0, 16]);
        for (tokens, batched) in batch.iter().zip(&hidden).filter(|(t, _)| !t.is_empty()) {
            let alone = model.forward(tokens, &mut KvCache::default()).unwrap();
            let diff = max_difference(&alone, batched);
            assert!(diff < 1e-5, "{tokens:?}: batched hidden states differ by {diff}");
        }
    }
}

/// One step mixing what a scheduler feeds: a whole prompt into an empty cache, a sampled token
/// after a cached prompt, and the second piece of a prompt read in two: each sequence's rows
/// equal its own pass, and each cache ends where a lone pass leaves it.
#[test]
fn a_step_mixing_prompts_and_decoded_tokens_equals_each_alone() {
    for (model, _, _) in each_level(WeightPrecision::F32) {
        let prompt: Vec<u32> = vec![464, 2068, 7586, 21831, 18045, 625, 262];
        let (mut fresh, mut decoding, mut halfway) =
            (KvCache::default(), KvCache::default(), KvCache::default());
        model.forward(&prompt, &mut decoding).unwrap();
        model.forward(&prompt[..3], &mut halfway).unwrap();
        let inputs: [&[u32]; 3] = [&prompt[..5], &[16931], &prompt[3..]];
        let hidden = model
            .extend_batch(&inputs, &mut [&mut fresh, &mut decoding, &mut halfway])
            .unwrap();
        assert_eq!(hidden.dims(), [5 + 1 + 4, 16]);

        let alone = model.forward(&prompt[..5], &mut KvCache::default()).unwrap();
        assert!(max_difference(&hidden.i(0..5).unwrap(), &alone) < 1e-5);
        let mut cache = KvCache::default();
        let whole: Vec<u32> = prompt.iter().copied().chain([16931]).collect();
        let alone = model.forward(&whole, &mut cache).unwrap();
        assert!(max_difference(&hidden.i(5..6).unwrap(), &alone.i(7..8).unwrap()) < 1e-4);
        let alone = model.forward(&prompt, &mut KvCache::default()).unwrap();
        assert!(max_difference(&hidden.i(6..10).unwrap(), &alone.i(3..7).unwrap()) < 1e-4);
        assert_eq!([fresh.len(), decoding.len(), halfway.len()], [5, 8, 7]);

        let refused = model.extend_batch(
            &[&prompt, &[]],
            &mut [&mut KvCache::default(), &mut KvCache::default()],
        );
        assert!(refused.unwrap_err().to_string().contains("no tokens"));
    }
}

/// A prompt read in pieces (as a busy scheduler reads a long one) gives the prompt
/// log-probabilities and the greedy continuation of the prompt read whole.
#[test]
fn a_prompt_read_in_pieces_generates_as_if_read_whole() {
    for (model, _, _) in each_level(WeightPrecision::F32) {
        let tokenizer = Gpt2Tokenizer::builtin().unwrap();
        let prompt: Vec<u32> = vec![464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13];
        let options = GenerateOptions {
            max_tokens: 6,
            logprobs: Some(2),
            ..Default::default()
        };
        let (whole, whole_logprobs) =
            Generation::start(&model, &tokenizer, &prompt, options.clone()).unwrap();
        let want: Vec<u32> = whole.map(|step| step.unwrap().token).collect();

        let mut pieces = Generation::new(&model, &tokenizer, prompt.clone(), options).unwrap();
        assert!(pieces.scores_prompt());
        let mut logprobs = None;
        for piece in [4, 1, 5] {
            assert!(logprobs.is_none(), "the prompt was done early");
            let input = pieces.unread_prompt()[..piece].to_vec();
            let hidden = model.extend_batch(&[&input], &mut [pieces.cache_mut()]).unwrap();
            let rows: Vec<u32> = (0..piece as u32).collect();
            logprobs = pieces.prompt_read(piece, model.logits_of_rows(&hidden, &rows).unwrap());
        }
        let logprobs = logprobs.expect("the whole prompt was read");
        assert!(pieces.unread_prompt().is_empty());
        assert_eq!(logprobs.len(), whole_logprobs.len());
        for (a, b) in logprobs.iter().zip(&whole_logprobs) {
            assert_eq!(a.token, b.token);
            assert!((a.logprob - b.logprob).abs() < 1e-4, "{a:?} vs {b:?}");
        }
        let got: Vec<u32> = pieces.map(|step| step.unwrap().token).collect();
        assert_eq!(got, want);
    }
}

#[test]
fn context_overflow_is_an_error() {
    for (model, _, _) in each_level(WeightPrecision::F32) {
        let err = model
            .forward(&vec![0; 1025], &mut KvCache::default())
            .unwrap_err();
        assert!(err.to_string().contains("1025"), "{err}");
    }
}

/// Token-by-token decoding through the cache (which grows past its first 64 and 128
/// positions) gives the hidden states of one pass over the whole sequence.
#[test]
fn decoding_through_a_growing_cache_equals_one_pass() {
    for (model, _, _) in each_level(WeightPrecision::F32) {
        let tokens: Vec<u32> = (0..150u32).map(|i| (i * 7919) % 50_000).collect();
        let whole = model.forward(&tokens, &mut KvCache::default()).unwrap();
        let mut cache = KvCache::default();
        model.forward(&tokens[..10], &mut cache).unwrap();
        for (position, &token) in tokens.iter().enumerate().skip(10) {
            let step = model.forward(&[token], &mut cache).unwrap();
            let want = whole.i(position..position + 1).unwrap();
            let error = max_difference(&step, &want);
            assert!(error < 1e-4, "position {position}: {error}");
        }
        assert_eq!(cache.len(), tokens.len());
    }
}
