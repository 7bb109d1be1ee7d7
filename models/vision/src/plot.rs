//! The two pictures a training run leaves next to its head: the learning curves (loss and
//! accuracy per epoch, training and validation) and the confusion matrix, as PNG, drawn with
//! embedded-graphics' primitives and bitmap fonts onto an `image` buffer (no system fonts).

use std::convert::Infallible;
use std::path::Path;

use embedded_graphics::mono_font::ascii::{FONT_10X20, FONT_7X13};
use embedded_graphics::mono_font::{MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Baseline, Text, TextStyleBuilder};
use image::{Rgb, RgbImage};

use crate::evaluate::Evaluation;
use crate::train::EpochRecord;
use crate::VisionError;

const WHITE: Rgb888 = Rgb888::new(255, 255, 255);
const BLACK: Rgb888 = Rgb888::new(30, 30, 30);
const GRID: Rgb888 = Rgb888::new(225, 225, 225);
const TRAIN: Rgb888 = Rgb888::new(31, 119, 180);
const VALIDATION: Rgb888 = Rgb888::new(255, 127, 14);
const BEST: Rgb888 = Rgb888::new(150, 150, 150);

/// An RGB image embedded-graphics can draw on.
struct Canvas(RgbImage);

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.0.width(), self.0.height())
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(&mut self, pixels: I) -> Result<(), Infallible> {
        for Pixel(point, color) in pixels {
            if let (Ok(x), Ok(y)) = (u32::try_from(point.x), u32::try_from(point.y)) {
                if x < self.0.width() && y < self.0.height() {
                    self.0.put_pixel(x, y, Rgb([color.r(), color.g(), color.b()]));
                }
            }
        }
        Ok(())
    }
}

impl Canvas {
    fn new(width: u32, height: u32) -> Self {
        Self(RgbImage::from_pixel(width, height, Rgb([255, 255, 255])))
    }

    fn text(&mut self, text: &str, at: Point, font: &MonoFont, color: Rgb888, alignment: Alignment) {
        let style = TextStyleBuilder::new()
            .alignment(alignment)
            .baseline(Baseline::Middle)
            .build();
        let _ = Text::with_text_style(text, at, MonoTextStyle::new(font, color), style).draw(self);
    }

    fn line(&mut self, from: Point, to: Point, color: Rgb888, width: u32) {
        let _ = Line::new(from, to)
            .into_styled(PrimitiveStyle::with_stroke(color, width))
            .draw(self);
    }

    fn fill(&mut self, top_left: Point, size: Size, color: Rgb888) {
        let _ = Rectangle::new(top_left, size)
            .into_styled(PrimitiveStyle::with_fill(color))
            .draw(self);
    }

    fn save(self, path: &Path) -> Result<(), VisionError> {
        self.0
            .save(path)
            .map_err(|e| VisionError::Head(format!("cannot write {}: {e}", path.display())))
    }
}

/// One chart: epochs along x, a value along y, one polyline per series.
struct Panel {
    origin: Point,
    size: Size,
    epochs: usize,
    y_range: (f64, f64),
}

impl Panel {
    fn point(&self, epoch: usize, value: f64) -> Point {
        let (low, high) = self.y_range;
        let x = self.origin.x
            + ((epoch - 1) as f64 / (self.epochs.max(2) - 1) as f64 * self.size.width as f64) as i32;
        let share = ((value - low) / (high - low)).clamp(0.0, 1.0);
        let y = self.origin.y + self.size.height as i32 - (share * self.size.height as f64) as i32;
        Point::new(x, y)
    }

    fn draw_axes(&self, canvas: &mut Canvas, title: &str, percent: bool) {
        let (low, high) = self.y_range;
        for i in 0..=4 {
            let value = low + (high - low) * f64::from(i) / 4.0;
            let y = self.point(1, value).y;
            canvas.line(
                Point::new(self.origin.x, y),
                Point::new(self.origin.x + self.size.width as i32, y),
                GRID,
                1,
            );
            let label = if percent {
                format!("{:.0}%", value * 100.0)
            } else {
                format!("{value:.2}")
            };
            canvas.text(
                &label,
                Point::new(self.origin.x - 8, y),
                &FONT_7X13,
                BLACK,
                Alignment::Right,
            );
        }
        let bottom = self.origin.y + self.size.height as i32;
        let step = (self.epochs / 8).max(1);
        for epoch in (1..=self.epochs).filter(|e| (e - 1) % step == 0 || *e == self.epochs) {
            let x = self.point(epoch, low).x;
            canvas.line(Point::new(x, bottom), Point::new(x, bottom + 5), BLACK, 1);
            canvas.text(
                &epoch.to_string(),
                Point::new(x, bottom + 14),
                &FONT_7X13,
                BLACK,
                Alignment::Center,
            );
        }
        canvas.line(self.origin, Point::new(self.origin.x, bottom), BLACK, 1);
        canvas.line(
            Point::new(self.origin.x, bottom),
            Point::new(self.origin.x + self.size.width as i32, bottom),
            BLACK,
            1,
        );
        let centre = self.origin.x + self.size.width as i32 / 2;
        canvas.text(
            title,
            Point::new(centre, self.origin.y - 22),
            &FONT_10X20,
            BLACK,
            Alignment::Center,
        );
        canvas.text(
            "epoch",
            Point::new(centre, bottom + 32),
            &FONT_7X13,
            BLACK,
            Alignment::Center,
        );
    }

    fn draw_series(&self, canvas: &mut Canvas, values: &[f64], color: Rgb888) {
        let points: Vec<Point> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, &v)| self.point(i + 1, v))
            .collect();
        for pair in points.windows(2) {
            canvas.line(pair[0], pair[1], color, 2);
        }
    }
}

/// `learning_curves.png`: loss (left) and accuracy (right) per epoch, training and validation,
/// with the kept epoch marked.
pub fn learning_curves(history: &[EpochRecord], best_epoch: usize, path: &Path) -> Result<(), VisionError> {
    let mut canvas = Canvas::new(1100, 480);
    let epochs = history.len().max(1);
    let series = |f: fn(&EpochRecord) -> f64| -> Vec<f64> { history.iter().map(f).collect() };
    let losses = [series(|r| r.train_loss), series(|r| r.val_loss)];
    let accuracies = [series(|r| r.train_accuracy), series(|r| r.val_accuracy)];
    let finite_max = |sets: &[Vec<f64>]| {
        sets.iter()
            .flatten()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
    };
    let finite_min = |sets: &[Vec<f64>]| {
        sets.iter()
            .flatten()
            .copied()
            .filter(|v| v.is_finite())
            .fold(1.0, f64::min)
    };
    let panels = [
        (
            Panel {
                origin: Point::new(80, 60),
                size: Size::new(420, 330),
                epochs,
                y_range: (0.0, (finite_max(&losses) * 1.1).max(1e-3)),
            },
            "loss (cross-entropy)",
            losses,
            false,
        ),
        (
            Panel {
                origin: Point::new(640, 60),
                size: Size::new(420, 330),
                epochs,
                y_range: ((finite_min(&accuracies) - 0.05).clamp(0.0, 0.95), 1.0),
            },
            "accuracy",
            accuracies,
            true,
        ),
    ];
    for (panel, title, [train, val], percent) in &panels {
        panel.draw_axes(&mut canvas, title, *percent);
        if best_epoch >= 1 {
            let top = panel.point(best_epoch, panel.y_range.1);
            let bottom = panel.point(best_epoch, panel.y_range.0);
            canvas.line(top, bottom, BEST, 1);
        }
        panel.draw_series(&mut canvas, train, TRAIN);
        panel.draw_series(&mut canvas, val, VALIDATION);
    }
    let legend_y = 452;
    for (i, (name, color)) in [
        ("training", TRAIN),
        ("validation", VALIDATION),
        ("kept epoch", BEST),
    ]
    .iter()
    .enumerate()
    {
        let x = 330 + i as i32 * 170;
        canvas.line(Point::new(x, legend_y), Point::new(x + 30, legend_y), *color, 3);
        canvas.text(
            name,
            Point::new(x + 38, legend_y),
            &FONT_7X13,
            BLACK,
            Alignment::Left,
        );
    }
    canvas.save(path)
}

/// `confusion_matrix.png`: counts, each cell shaded by its share of the true class's row.
pub fn confusion_matrix(evaluation: &Evaluation, title: &str, path: &Path) -> Result<(), VisionError> {
    let n = evaluation.classes.len() as i32;
    let cell = 90;
    let label_width = 130;
    let (left, top) = (label_width + 40, 110);
    let mut canvas = Canvas::new((left + n * cell + 30) as u32, (top + n * cell + 60) as u32);
    canvas.text(
        title,
        Point::new(left + n * cell / 2, 24),
        &FONT_10X20,
        BLACK,
        Alignment::Center,
    );
    canvas.text(
        "predicted",
        Point::new(left + n * cell / 2, 58),
        &FONT_7X13,
        BLACK,
        Alignment::Center,
    );
    canvas.text(
        "true",
        Point::new(18, top + n * cell / 2),
        &FONT_7X13,
        BLACK,
        Alignment::Left,
    );
    for (i, class) in evaluation.classes.iter().enumerate() {
        let i = i as i32;
        let short: String = class.label.chars().take(12).collect();
        canvas.text(
            &short,
            Point::new(left + i * cell + cell / 2, top - 16),
            &FONT_7X13,
            BLACK,
            Alignment::Center,
        );
        canvas.text(
            &short,
            Point::new(left - 10, top + i * cell + cell / 2),
            &FONT_7X13,
            BLACK,
            Alignment::Right,
        );
    }
    for (t, row) in evaluation.confusion.iter().enumerate() {
        let total: usize = row.iter().sum();
        for (p, &count) in row.iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                count as f64 / total as f64
            };
            let shade =
                |white: u8, full: u8| (f64::from(white) + (f64::from(full) - f64::from(white)) * share) as u8;
            let color = Rgb888::new(shade(247, 8), shade(251, 69), shade(255, 148));
            let corner = Point::new(left + p as i32 * cell, top + t as i32 * cell);
            canvas.fill(corner, Size::new(cell as u32 - 2, cell as u32 - 2), color);
            let ink = if share > 0.5 { WHITE } else { BLACK };
            let centre = corner + Point::new(cell / 2 - 1, cell / 2 - 1);
            canvas.text(&count.to_string(), centre, &FONT_10X20, ink, Alignment::Center);
        }
    }
    let footer = format!(
        "accuracy {:.1}% over {} images",
        evaluation.accuracy * 100.0,
        evaluation.samples
    );
    canvas.text(
        &footer,
        Point::new(left + n * cell / 2, top + n * cell + 30),
        &FONT_7X13,
        BLACK,
        Alignment::Center,
    );
    canvas.save(path)
}
