//! GPT-2 in the Hugging Face layout (`Conv1D` weights stored in x out), any size from its
//! `config.json`, the LM head tied to the token embedding.
//!
//! The dense weights (attention and MLP matrices, the tied embedding and head) are held in f32
//! or bf16 ([`WeightPrecision`]); biases, norms, positions and every activation are f32.
//!
//! The model holds no per-request state: each generation owns a [`KvCache`], so any number of
//! requests can run against one loaded model.

use std::path::Path;

use candle_core::{DType, Tensor};
use hub::F32Values;
use serde::Deserialize;
use simd::gemm::Activation;
use simd::{team, Level};

use crate::activation::Gelu;
use crate::attention::{attend_cached, Heads, KvCache, SequenceRows};
use crate::dense::{Dense, TokenTable};
use crate::norm::LayerNorm;
use crate::reading::{Piece, PieceOutput};
use crate::TextError;

/// Rows up to which a pass runs on a [`team`]: decode steps, alone or batched, whose products
/// are bound by reading the weights and last tens of microseconds each. A prompt's products
/// and attention are long enough for rayon's hand-offs to cost nothing that matters.
const TEAM_ROWS: usize = 16;

/// How the dense weights are held in memory. Decoding reads every dense weight once per step,
/// so bf16 (half the bytes) decodes up to twice as fast; each weight is rounded to 8 bits of
/// mantissa, which moves the logits by a few tenths of a percent of their spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightPrecision {
    #[default]
    F32,
    Bf16,
}

/// The fields of GPT-2's `config.json` the network needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_activation")]
    pub activation_function: String,
}

fn default_eps() -> f64 {
    1e-5
}

fn default_activation() -> String {
    "gelu_new".into()
}

impl Gpt2Config {
    pub fn from_json(text: &str) -> Result<Self, TextError> {
        let config: Self = serde_json::from_str(text).map_err(|e| TextError::Config(e.to_string()))?;
        if config.n_head == 0 || !config.n_embd.is_multiple_of(config.n_head) {
            return Err(TextError::Config(format!(
                "n_embd {} is not a multiple of n_head {}",
                config.n_embd, config.n_head
            )));
        }
        Gelu::from_config(&config.activation_function)?;
        Ok(config)
    }
}

#[derive(Debug)]
struct Block {
    gelu: Gelu,
    ln_1: LayerNorm,
    c_attn: Dense,
    attn_proj: Dense,
    ln_2: LayerNorm,
    c_fc: Dense,
    mlp_proj: Dense,
}

impl Block {
    /// `x + attention(ln_1(x))`, then `+ mlp(ln_2(..))`: the residual sums and the tanh GELU
    /// are taken in the products' epilogues. `attend` answers the attended rows of `qkv`.
    fn forward(
        &self,
        level: Level,
        x: &Tensor,
        attend: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let qkv = self
            .c_attn
            .forward(level, &self.ln_1.forward(level, x)?, Activation::Identity, None)?;
        let attended = attend(&qkv)?;
        let x = self
            .attn_proj
            .forward(level, &attended, Activation::Identity, Some(x))?;
        let hidden = self
            .c_fc
            .forward(level, &self.ln_2.forward(level, &x)?, self.gelu.epilogue(), None)?;
        let hidden = self.gelu.after_epilogue(hidden)?;
        self.mlp_proj
            .forward(level, &hidden, Activation::Identity, Some(&x))
    }
}

/// GPT-2 with its language-model head, its kernels those of one [`Level`].
#[derive(Debug)]
pub struct Gpt2 {
    config: Gpt2Config,
    level: Level,
    /// The token embedding, also the LM head.
    wte: TokenTable,
    wpe: TokenTable,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
}

impl Gpt2 {
    /// Loads `config.json` and `model.safetensors` (with or without the `transformer.` prefix),
    /// holding the dense weights in `precision` whatever the file's type, for the kernels of
    /// `level` (normally [`simd::level`]).
    pub fn load(
        config_path: &Path,
        weights_path: &Path,
        precision: WeightPrecision,
        level: Level,
    ) -> Result<Self, TextError> {
        let text = std::fs::read_to_string(config_path)
            .map_err(|e| TextError::Config(format!("cannot read {}: {e}", config_path.display())))?;
        let config = Gpt2Config::from_json(&text)?;
        let file = hub::SafetensorsFile::open(weights_path).map_err(|e| TextError::Weights(e.to_string()))?;
        Self::from_file(config, &file, precision, level)
    }

    /// Builds the model from a mapped `model.safetensors`: f32 dense weights and embeddings are
    /// used where they lie in it, bf16 ones converted.
    pub fn from_file(
        config: Gpt2Config,
        file: &hub::SafetensorsFile,
        precision: WeightPrecision,
        level: Level,
    ) -> Result<Self, TextError> {
        let weights = WeightsOf { file };
        let d = config.n_embd;
        let eps = config.layer_norm_epsilon;
        let gelu = Gelu::from_config(&config.activation_function)?;
        let wte = weights.values("wte.weight", &[config.vocab_size, d])?;
        let wte = match precision {
            WeightPrecision::F32 => TokenTable::f32(wte),
            WeightPrecision::Bf16 => TokenTable::bf16(&wte, config.vocab_size, d),
        };
        let wpe = TokenTable::f32(weights.values("wpe.weight", &[config.n_positions, d])?);
        let norm = |name: &str| -> Result<LayerNorm, TextError> {
            let weight = weights.values(&format!("{name}.weight"), &[d])?.to_vec();
            let bias = weights.values(&format!("{name}.bias"), &[d])?.to_vec();
            Ok(LayerNorm::new(weight, bias, eps as f32))
        };
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("h.{i}");
            let linear = |name: &str, inputs: usize, outputs: usize| -> Result<Dense, TextError> {
                let weight = weights.values(&format!("{p}.{name}.weight"), &[inputs, outputs])?;
                let bias = weights.values(&format!("{p}.{name}.bias"), &[outputs])?.to_vec();
                Ok(match precision {
                    WeightPrecision::F32 => Dense::f32(weight, bias),
                    WeightPrecision::Bf16 => Dense::bf16(level, &weight, bias, inputs, outputs),
                })
            };
            blocks.push(Block {
                gelu,
                ln_1: norm(&format!("{p}.ln_1"))?,
                c_attn: linear("attn.c_attn", d, 3 * d)?,
                attn_proj: linear("attn.c_proj", d, d)?,
                ln_2: norm(&format!("{p}.ln_2"))?,
                c_fc: linear("mlp.c_fc", d, 4 * d)?,
                mlp_proj: linear("mlp.c_proj", 4 * d, d)?,
            });
        }
        let ln_f = norm("ln_f")?;
        Ok(Self {
            config,
            level,
            wte,
            wpe,
            blocks,
            ln_f,
        })
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// The level of vector instructions the kernels run at.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Moves the f32 weights used where they lie in the mapped file into memory of their own,
    /// laid out for the kernels and backed by huge pages, on the calling thread, layer after
    /// layer; the model answers throughout, each layer faster once moved. A service calls it
    /// from a background thread once it is up, so that the move costs the cold start nothing
    /// (bf16 weights are laid out at load already).
    pub fn pack_weights(&self) {
        for block in &self.blocks {
            for dense in [&block.c_attn, &block.attn_proj, &block.c_fc, &block.mlp_proj] {
                dense.pack(self.level);
            }
        }
        self.wte.copy_to_huge_pages();
    }

    /// Runs `tokens` after those already in `cache`, extending it; answers the final hidden
    /// states (new tokens, n_embd), after `ln_f` (for embeddings, retrieval, or [`Gpt2::logits`]).
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor, TextError> {
        self.extend_batch(&[tokens], &mut [cache])
    }

    /// The next-token logits (1, vocab) after `tokens`, which follow what `cache` holds,
    /// extending it: [`Gpt2::forward`], then [`Gpt2::logits`] of its last row, in one region of
    /// the compute pool (a decode step that entered it twice would wake its workers twice).
    pub fn next_logits(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor, TextError> {
        let mut caches = [Some(cache)];
        on_compute_pool(tokens.len(), || {
            let hidden = self.extend_batch_on_pool(&[tokens], &mut caches)?;
            self.logits(&hidden.narrow(0, hidden.dim(0)? - 1, 1)?)
        })
    }

    /// Runs independent sequences as one batch and answers each one's final hidden states
    /// (len, n_embd; none for an empty sequence), as [`Gpt2::forward`] would from an empty
    /// cache. The dense layers see every sequence's rows at once, which keeps the matrix
    /// products large enough to run at full speed; attention stays within each sequence, which
    /// keeps no cache.
    pub fn forward_batch(&self, sequences: &[&[u32]]) -> Result<Vec<Tensor>, TextError> {
        let read: Vec<&[u32]> = sequences.iter().copied().filter(|t| !t.is_empty()).collect();
        let mut caches: Vec<Option<&mut KvCache>> = read.iter().map(|_| None).collect();
        let x = match read.is_empty() {
            true => Tensor::zeros((0, self.config.n_embd), DType::F32, &candle_core::Device::Cpu)?,
            false => on_compute_pool(read.iter().map(|t| t.len()).sum(), || {
                self.extend_batch_on_pool(&read, &mut caches)
            })?,
        };
        let mut offset = 0;
        Ok(sequences
            .iter()
            .map(|tokens| {
                offset += tokens.len();
                x.narrow(0, offset - tokens.len(), tokens.len())
            })
            .collect::<candle_core::Result<_>>()?)
    }

    /// One step of several generations at once: `inputs[i]` (at least one token) follows what
    /// `caches[i]` holds: the token a generation sampled last, or a prompt or a piece of one
    /// when it starts. The dense layers read their weights once for all the rows, which is
    /// what makes a batch of generations cost little more than one, and lets a starting
    /// generation's prompt ride along with the others' tokens instead of stopping them for a
    /// pass of its own; attention runs per sequence against its own cache. Answers the final
    /// hidden states of every new row, sequence after sequence (total rows, n_embd).
    pub fn extend_batch(&self, inputs: &[&[u32]], caches: &mut [&mut KvCache]) -> Result<Tensor, TextError> {
        let mut caches: Vec<Option<&mut KvCache>> =
            caches.iter_mut().map(|cache| Some(&mut **cache)).collect();
        on_compute_pool(inputs.iter().map(|t| t.len()).sum(), || {
            self.extend_batch_on_pool(inputs, &mut caches)
        })
    }

    /// One batched pass over pieces of many sequences ([`crate::reading`]): each piece's rows
    /// after what its cache holds, as [`Gpt2::extend_batch`] reads them (a piece without a
    /// cache is a whole sequence, read as [`Gpt2::forward_batch`] reads it), and the logits of
    /// the rows each piece asks for, all through the head at once.
    pub fn read_pieces(&self, pieces: &mut [Piece<'_>]) -> Result<Vec<PieceOutput>, TextError> {
        if pieces.is_empty() {
            return Ok(Vec::new());
        }
        let inputs: Vec<&[u32]> = pieces.iter().map(|piece| piece.tokens).collect();
        let mut wanted = Vec::new();
        let mut offset = 0;
        for piece in pieces.iter() {
            wanted.extend(piece.logits.clone().map(|row| (offset + row) as u32));
            offset += piece.tokens.len();
        }
        let mut caches: Vec<Option<&mut KvCache>> = pieces
            .iter_mut()
            .map(|piece| piece.cache.as_deref_mut())
            .collect();
        // The head runs in the same region of the pool as the layers, for the reason
        // [`Gpt2::next_logits`] gives.
        let (hidden, logits) = on_compute_pool(offset, || {
            let hidden = self.extend_batch_on_pool(&inputs, &mut caches)?;
            let logits = self.logits_of_rows(&hidden, &wanted)?;
            Ok::<_, TextError>((hidden, logits))
        })?;
        let mut logits = logits.into_iter();
        let mut offset = 0;
        pieces
            .iter()
            .map(|piece| {
                let len = piece.tokens.len();
                let output = PieceOutput {
                    hidden: hidden.narrow(0, offset, len)?,
                    logits: logits.by_ref().take(piece.logits.len()).collect(),
                };
                offset += len;
                Ok(output)
            })
            .collect()
    }

    fn extend_batch_on_pool(
        &self,
        inputs: &[&[u32]],
        caches: &mut [Option<&mut KvCache>],
    ) -> Result<Tensor, TextError> {
        if inputs.len() != caches.len() {
            return Err(TextError::Weights(format!(
                "{} inputs for {} caches",
                inputs.len(),
                caches.len()
            )));
        }
        if inputs.iter().any(|tokens| tokens.is_empty()) {
            return Err(TextError::Tokenizer("an input has no tokens".into()));
        }
        let starts: Vec<usize> = caches
            .iter()
            .map(|cache| cache.as_ref().map_or(0, |c| c.len))
            .collect();
        let spans = self.spans(inputs, &starts)?;
        for cache in caches.iter_mut().flatten() {
            cache.ensure_layers(self.config.n_layer);
        }
        let x = self.run_rows(inputs, &spans, |layer, qkv| {
            let mut layers: Vec<_> = caches
                .iter_mut()
                .map(|cache| cache.as_mut().map(|cache| &mut cache.layers[layer]))
                .collect();
            attend_cached(self.level, qkv, &spans, &mut layers, self.heads())
        })?;
        for (cache, span) in caches.iter_mut().zip(&spans) {
            if let Some(cache) = cache {
                cache.len = span.past + span.len;
            }
        }
        Ok(x)
    }

    /// Where each sequence's rows sit in a batch, after checking its tokens.
    fn spans(&self, sequences: &[&[u32]], starts: &[usize]) -> Result<Vec<SequenceRows>, TextError> {
        let mut offset = 0;
        sequences
            .iter()
            .zip(starts)
            .map(|(tokens, &start)| {
                self.check(tokens, start)?;
                let span = SequenceRows {
                    offset,
                    len: tokens.len(),
                    past: start,
                };
                offset += tokens.len();
                Ok(span)
            })
            .collect()
    }

    /// The layers over a batch's rows, `attend(layer, qkv)` answering the attended rows; then
    /// `ln_f`.
    fn run_rows(
        &self,
        sequences: &[&[u32]],
        spans: &[SequenceRows],
        mut attend: impl FnMut(usize, &Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<Tensor, TextError> {
        let tokens: Vec<u32> = sequences.concat();
        let positions: Vec<u32> = spans
            .iter()
            .flat_map(|span| (span.past..span.past + span.len).map(|p| p as u32))
            .collect();
        let mut x = self.embed(&tokens, &positions)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            x = block.forward(self.level, &x, |qkv| attend(layer, qkv))?;
        }
        Ok(self.ln_f.forward(self.level, &x)?)
    }

    fn heads(&self) -> Heads {
        Heads {
            count: self.config.n_head,
            dim: self.config.n_embd / self.config.n_head,
        }
    }

    /// Refuses tokens outside the vocabulary, or that would run past the context after
    /// `start` tokens.
    pub fn check(&self, tokens: &[u32], start: usize) -> Result<(), TextError> {
        let end = start + tokens.len();
        if end > self.config.n_positions {
            return Err(TextError::ContextOverflow {
                tokens: end,
                context: self.config.n_positions,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(TextError::Weights(format!(
                "token {bad} is outside the vocabulary"
            )));
        }
        Ok(())
    }

    /// Token plus position embeddings.
    fn embed(&self, tokens: &[u32], positions: &[u32]) -> candle_core::Result<Tensor> {
        self.wte.rows(tokens)?.add(&self.wpe.rows(positions)?)
    }

    /// (rows, vocab) next-token logits of final hidden states (the head tied to the token
    /// embedding). Kept apart from [`Gpt2::forward`] so that a prefill pays for the head only on
    /// the positions whose logits it needs (one vocabulary-wide product per row).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor, TextError> {
        on_compute_pool(hidden.dim(0)?, || Ok(self.wte.logits(self.level, hidden)?))
    }

    /// The logits of some rows of final hidden states, one list per row, in the order asked.
    pub fn logits_of_rows(&self, hidden: &Tensor, rows: &[u32]) -> Result<Vec<Vec<f32>>, TextError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let rows = Tensor::new(rows, hidden.device())?;
        Ok(self.logits(&hidden.index_select(&rows, 0)?)?.to_vec2()?)
    }
}

/// Runs `work` over `rows` activation rows on a rayon worker. Every layer's products split
/// across the pool; started from inside it they hand work to the other worker directly, where
/// from outside each of the ~50 parallel loops of a decode step would put the calling thread
/// to sleep and wake it again. A step of few rows runs on a [`team`]: its loops are then so
/// short that waking a sleeping worker for each is a large part of the step.
fn on_compute_pool<R: Send>(rows: usize, work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| match rows <= TEAM_ROWS {
        true => team::with_team(work),
        false => work(),
    })
}

/// Named weights of a GPT-2 file, with or without Hugging Face's `transformer.` prefix, checked
/// against the shapes the config implies.
struct WeightsOf<'a> {
    file: &'a hub::SafetensorsFile,
}

impl WeightsOf<'_> {
    fn name(&self, name: &str) -> Result<String, TextError> {
        let prefixed = format!("transformer.{name}");
        [name.to_string(), prefixed.clone()]
            .into_iter()
            .find(|candidate| self.file.shape(candidate).is_some())
            .ok_or_else(|| self.invalid(format!("missing tensor `{name}` (or `{prefixed}`)")))
    }

    /// An error about the file, naming it.
    fn invalid(&self, reason: String) -> TextError {
        TextError::Weights(format!("{}: {reason}", self.file.path().display()))
    }

    fn check(&self, name: &str, shape: &[usize]) -> Result<String, TextError> {
        let found = self.name(name)?;
        let actual = self.file.shape(&found).unwrap_or_default();
        if actual != shape {
            return Err(self.invalid(format!("`{found}` has shape {actual:?}, expected {shape:?}")));
        }
        Ok(found)
    }

    /// The values as f32, in place where the file allows.
    fn values(&self, name: &str, shape: &[usize]) -> Result<F32Values, TextError> {
        let found = self.check(name, shape)?;
        self.file
            .f32_values(&found)
            .map_err(|e| TextError::Weights(e.to_string()))
    }
}
