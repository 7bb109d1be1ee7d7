//! Classification figures: accuracy, per-class precision, recall and F1, and the confusion
//! matrix (rows: true class, columns: predicted class).

use serde::Serialize;

/// Precision, recall and F1 of one class, and how many samples it has.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassFigures {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// How a classifier did on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Share of samples whose predicted class is the true one, in [0, 1].
    pub accuracy: f64,
    pub samples: usize,
    pub classes: Vec<ClassFigures>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

/// Figures for `predicted` against `truth` (class indices into `labels`). A class never
/// predicted has precision 0, as scikit-learn reports it.
pub fn evaluate(labels: &[String], truth: &[u32], predicted: &[u32]) -> Evaluation {
    let n = labels.len();
    let mut confusion = vec![vec![0usize; n]; n];
    for (&t, &p) in truth.iter().zip(predicted) {
        if (t as usize) < n && (p as usize) < n {
            confusion[t as usize][p as usize] += 1;
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let classes = (0..n)
        .map(|c| {
            let hits = confusion[c][c];
            let support: usize = confusion[c].iter().sum();
            let predicted_as: usize = confusion.iter().map(|row| row[c]).sum();
            let (precision, recall) = (ratio(hits, predicted_as), ratio(hits, support));
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            ClassFigures {
                label: labels[c].clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    let correct: usize = (0..n).map(|c| confusion[c][c]).sum();
    Evaluation {
        accuracy: ratio(correct, truth.len()),
        samples: truth.len(),
        classes,
        confusion,
    }
}

impl Evaluation {
    /// A plain-text table: accuracy, then one line per class, then the confusion matrix.
    pub fn table(&self) -> String {
        let width = self
            .classes
            .iter()
            .map(|c| c.label.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = format!(
            "accuracy {:.2}% ({} images)\n\n",
            self.accuracy * 100.0,
            self.samples
        );
        out += &format!("{:<width$}  precision  recall     f1  support\n", "class");
        for c in &self.classes {
            out += &format!(
                "{:<width$}  {:>9.3}  {:>6.3}  {:>5.3}  {:>7}\n",
                c.label, c.precision, c.recall, c.f1, c.support
            );
        }
        out += &format!("\nconfusion (rows: true, columns: predicted)\n{:<width$}", "");
        for c in &self.classes {
            out += &format!("  {:>9}", truncate(&c.label, 9));
        }
        for (c, row) in self.classes.iter().zip(&self.confusion) {
            out += &format!("\n{:<width$}", c.label);
            for count in row {
                out += &format!("  {count:>9}");
            }
        }
        out + "\n"
    }
}

fn truncate(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_match_a_hand_count() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let truth = [0, 0, 0, 1, 1, 2];
        let predicted = [0, 0, 1, 1, 1, 0];
        let e = evaluate(&labels, &truth, &predicted);
        assert_eq!(e.confusion, [[2, 1, 0], [0, 2, 0], [1, 0, 0]]);
        assert!((e.accuracy - 4.0 / 6.0).abs() < 1e-12);
        // a: 2 of 3 predicted a are a, 2 of 3 a found.
        assert!((e.classes[0].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((e.classes[0].recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((e.classes[1].f1 - 0.8).abs() < 1e-12);
        assert_eq!(
            (e.classes[2].precision, e.classes[2].f1, e.classes[2].support),
            (0.0, 0.0, 1)
        );
        assert!(e.table().contains("accuracy 66.67% (6 images)"));
    }
}
