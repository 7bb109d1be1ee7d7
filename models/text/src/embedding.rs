//! Text embeddings from GPT-2: the mean of the final hidden states (after the last layer norm)
//! over the input's tokens, scaled to unit length so that a dot product is a cosine.

use crate::gpt2::Gpt2;
use crate::reading::{read_alone, Piece, PieceOutput, Reading, Sequences};
use crate::TextError;

/// The embedding (n_embd values) of each input, in order, read alone ([`read_alone`]). Every
/// input needs at least one token.
pub fn embed(model: &Gpt2, inputs: &[&[u32]]) -> Result<Vec<Vec<f32>>, TextError> {
    let mut embeddings = Embeddings::new(inputs.iter().map(|tokens| tokens.to_vec()).collect())?;
    read_alone(model, &mut embeddings, || false)?;
    Ok(embeddings.vectors())
}

/// An embeddings request being read: its inputs go through the model in pieces
/// ([`Reading`]), each input's hidden states summed as they come.
#[derive(Debug)]
pub struct Embeddings {
    sequences: Sequences,
    /// Per input, the sum of its hidden states so far, then its embedding.
    sums: Vec<Vec<f32>>,
}

impl Embeddings {
    /// Refuses an input without tokens.
    pub fn new(inputs: Vec<Vec<u32>>) -> Result<Self, TextError> {
        if let Some(i) = inputs.iter().position(Vec::is_empty) {
            return Err(TextError::Tokenizer(format!(
                "nothing to embed: input {i} has no tokens"
            )));
        }
        Ok(Self {
            sums: vec![Vec::new(); inputs.len()],
            sequences: Sequences::new(inputs),
        })
    }

    /// The embedding of each input, in order, once every row is read.
    pub fn vectors(self) -> Vec<Vec<f32>> {
        self.sums
    }
}

impl Reading for Embeddings {
    fn unread(&self) -> usize {
        self.sequences.unread()
    }

    fn claim<'s>(&'s mut self, rows: usize, pieces: &mut Vec<Piece<'s>>) {
        self.sequences.claim(rows, |_| 0..0, pieces);
    }

    fn absorb(&mut self, outputs: Vec<PieceOutput>) -> Result<(), TextError> {
        for ((input, _, finished), output) in self.sequences.absorbed().into_iter().zip(outputs) {
            let rows: Vec<f32> = output.hidden.sum(0)?.to_vec1()?;
            let sum = &mut self.sums[input];
            match sum.is_empty() {
                true => *sum = rows,
                false => sum.iter_mut().zip(rows).for_each(|(total, row)| *total += row),
            }
            if finished {
                let len = self.sequences.tokens(input).len() as f32;
                unit_mean(sum, len);
            }
        }
        Ok(())
    }
}

/// Turns a sum of `count` rows into their mean scaled to unit length, in place.
fn unit_mean(sum: &mut [f32], count: f32) {
    sum.iter_mut().for_each(|value| *value /= count);
    let norm = sum.iter().map(|value| value * value).sum::<f32>().sqrt();
    sum.iter_mut()
        .for_each(|value| *value /= norm.max(f32::MIN_POSITIVE));
}
