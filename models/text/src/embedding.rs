//! Text embeddings from GPT-2: the mean of the final hidden states (after the last layer norm)
//! over the input's tokens, scaled to unit length so that a dot product is a cosine.

use candle_core::{Tensor, D};

use crate::gpt2::Gpt2;
use crate::retrieval::rerank::BATCH_TOKENS;
use crate::TextError;

/// The embedding (n_embd values) of each input, in order; inputs run through the model in
/// batches of about [`BATCH_TOKENS`] tokens. Every input needs at least one token.
pub fn embed(model: &Gpt2, inputs: &[&[u32]]) -> Result<Vec<Vec<f32>>, TextError> {
    if let Some(i) = inputs.iter().position(|tokens| tokens.is_empty()) {
        return Err(TextError::Tokenizer(format!(
            "nothing to embed: input {i} has no tokens"
        )));
    }
    let mut vectors = Vec::with_capacity(inputs.len());
    let mut start = 0;
    while start < inputs.len() {
        let mut end = start + 1;
        let mut tokens = inputs[start].len();
        while end < inputs.len() && tokens + inputs[end].len() <= BATCH_TOKENS {
            tokens += inputs[end].len();
            end += 1;
        }
        for hidden in model.forward_batch(&inputs[start..end])? {
            vectors.push(unit_mean(&hidden)?);
        }
        start = end;
    }
    Ok(vectors)
}

fn unit_mean(hidden: &Tensor) -> Result<Vec<f32>, TextError> {
    let mean = hidden.mean(0)?;
    let norm = mean.sqr()?.sum(D::Minus1)?.sqrt()?.to_scalar::<f32>()?;
    Ok((mean / f64::from(norm.max(f32::MIN_POSITIVE)))?.to_vec1()?)
}
