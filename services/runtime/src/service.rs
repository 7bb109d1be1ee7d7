//! The `serve` sequence every service binary runs, written once: load the model (each step a
//! timed init phase), name it, bind the port (or take Lambda's Runtime API), start what answers
//! requests, serve until SIGTERM, drain, and answer the exit code. A service supplies only what
//! differs, through [`Service`].

use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;

use crate::{bind, startup_failure, InitPhases, Metrics, ModelCard, ServeArgs, ServiceContext};

/// What a service binary plugs into [`serve`].
pub trait Service {
    /// The service's name: the metrics prefix, and in logs.
    const NAME: &'static str;
    /// The playground page served at `GET /`: HTML with its script, no request to other sites.
    const PLAYGROUND: &'static str;
    /// The service's own routes in OpenAPI, from their request and answer types.
    fn openapi() -> utoipa::openapi::OpenApi;
    /// What loading gives: the model, ready to answer.
    type Model;
    /// Why loading failed; reported as one line, exit code 2.
    type Error: std::fmt::Display;

    /// Resolves, loads, builds and warms up the model, each step a phase of `phases`, and
    /// describes it; runs before the port is bound.
    fn load(&self, phases: &mut InitPhases) -> Result<(Self::Model, ModelCard), Self::Error>;

    /// The service's routes over `model`, starting its model thread (with `metrics`); runs
    /// once the port is bound. `card` carries the name the model is served under.
    fn routes(
        self,
        model: Self::Model,
        card: &ModelCard,
        metrics: Arc<Metrics>,
        serve: &ServeArgs,
    ) -> Result<Router, String>;
}

/// Loads `service`'s model, binds, serves its routes with the shared ones until SIGTERM, drains;
/// answers the process's exit code (2 when the model or the settings are unusable).
pub fn serve<S: Service>(service: S, args: &ServeArgs) -> ExitCode {
    let mut phases = InitPhases::new();
    let (model, card) = match service.load(&mut phases) {
        Ok((model, card)) => (model, card.served_as(args.served_model_name.as_deref())),
        Err(e) => return startup_failure(&e),
    };
    let listener = match bind(args, &mut phases) {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    let metrics = Arc::new(Metrics::default());
    let routes = match service.routes(model, &card, metrics.clone(), args) {
        Ok(routes) => routes,
        Err(e) => return startup_failure(&e),
    };
    let describe: fn() -> utoipa::openapi::OpenApi = S::openapi;
    let limits = args.clone();
    let openapi = crate::openapi::Description::new(move || {
        let shared = <crate::server::SharedRoutes as utoipa::OpenApi>::openapi();
        crate::openapi::document(describe(), shared, S::NAME, &limits)
    });
    let ctx = ServiceContext::new(
        S::NAME,
        card,
        phases.phases().to_vec(),
        metrics,
        S::PLAYGROUND,
        openapi,
    );
    crate::serve(ctx, routes, args, listener)
}
