//! Text embeddings from GPT-2: the mean of the final hidden states (after the last layer norm)
//! over the input's tokens, scaled to unit length so that a dot product is a cosine.

use candle_core::D;

use crate::gpt2::{Gpt2, KvCache};
use crate::TextError;

/// The embedding of `tokens` (n_embd values); at least one token.
pub fn embed(model: &Gpt2, tokens: &[u32]) -> Result<Vec<f32>, TextError> {
    if tokens.is_empty() {
        return Err(TextError::Tokenizer(
            "nothing to embed: the input has no tokens".into(),
        ));
    }
    let mean = model.forward(tokens, &mut KvCache::default())?.mean(0)?;
    let norm = mean.sqr()?.sum(D::Minus1)?.sqrt()?.to_scalar::<f32>()?;
    Ok((mean / f64::from(norm.max(f32::MIN_POSITIVE)))?.to_vec1()?)
}
