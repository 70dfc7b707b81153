//! The PostgreSQL wire endpoint (datafusion-postgres on pgwire): `psql`, Grafana and Metabase
//! query the same catalogue as the HTTP API. Password authentication (user `serving.pg_user`,
//! password: any API token); each connection gets its own session over the catalogue as it
//! is when it connects, with PostgreSQL's `pg_catalog` for clients that introspect; only
//! read statements run (queries, `EXPLAIN`, `SET`/`SHOW`, transactions and cursors), everything
//! else is refused with SQLSTATE 25006 (read-only transaction).

use std::{fmt::Debug, sync::Arc};

use async_trait::async_trait;
use datafusion_postgres::{
    DfSessionService, QueryHook,
    hooks::{HookClient, cursor::CursorStatementHook, set_show::SetShowHook, transactions::TransactionStatementHook},
    pgwire::{
        api::{
            ClientInfo, PgWireConnectionState, PgWireServerHandlers,
            auth::{self, DefaultServerParameterProvider, LoginInfo, StartupHandler},
            results::Response,
        },
        error::{ErrorInfo, PgWireError, PgWireResult},
        messages::{PgWireBackendMessage, PgWireFrontendMessage, startup::Authentication},
    },
};
use deltalake::datafusion::{
    common::ParamValues, logical_expr::LogicalPlan, prelude::SessionContext, sql::sqlparser::ast::Statement,
};
use futures::{Sink, SinkExt as _};

use crate::catalog::Catalog;

/// Password authentication: user `user`, password any of the API tokens.
#[derive(Debug)]
struct TokenAuth {
    user: String,
    tokens: Vec<String>,
    parameters: DefaultServerParameterProvider,
}

#[async_trait]
impl StartupHandler for TokenAuth {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                auth::protocol_negotiation(client, startup).await?;
                auth::save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client.send(PgWireBackendMessage::Authentication(Authentication::CleartextPassword)).await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let given = pwd.into_password()?.password;
                let user = LoginInfo::from_client_info(client).user().unwrap_or_default().to_string();
                if user != self.user || !self.tokens.contains(&given) {
                    metrics::counter!("weir_serving_pg_auth_failures_total").increment(1);
                    return Err(PgWireError::InvalidPassword(user));
                }
                auth::finish_authentication(client, &self.parameters).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Refuses every statement that is not a read.
struct ReadOnly;

fn refuse(statement: &Statement) -> Option<PgWireResult<Response>> {
    let allowed = matches!(
        statement,
        Statement::Query(_)
            | Statement::Explain { .. }
            | Statement::ShowVariable { .. }
            | Statement::ShowVariables { .. }
            | Statement::Set(_)
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Declare { .. }
            | Statement::Fetch { .. }
            | Statement::Close { .. }
    );
    if allowed {
        return None;
    }
    let first = statement.to_string().split_whitespace().next().unwrap_or_default().to_uppercase();
    Some(Err(PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "25006".into(),
        format!("Weir serves read-only SQL: {first} is not allowed"),
    )))))
}

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        refuse(statement)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        refuse(statement).map(|r| r.map(|_| unreachable!("refuse only returns errors")))
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        refuse(statement)
    }
}

/// One connection's handlers.
struct Connection {
    service: Arc<DfSessionService>,
    startup: Arc<TokenAuth>,
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl datafusion_postgres::pgwire::api::query::SimpleQueryHandler> {
        self.service.clone()
    }
    fn extended_query_handler(&self) -> Arc<impl datafusion_postgres::pgwire::api::query::ExtendedQueryHandler> {
        self.service.clone()
    }
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// Accepts PostgreSQL connections on `listener` until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    catalog: Arc<Catalog>,
    user: String,
    tokens: Vec<String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let auth = Arc::new(TokenAuth { user, tokens, parameters: DefaultServerParameterProvider::default() });
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let Some(ctx) = catalog.connection_context() else {
            tracing::warn!(%peer, "PostgreSQL connection before the catalogue is loaded: closed");
            continue;
        };
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(ReadOnly),
            Arc::new(CursorStatementHook),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
        ];
        let connection = Connection {
            service: Arc::new(DfSessionService::new_with_hooks(Arc::new(ctx), hooks)),
            startup: auth.clone(),
        };
        tokio::spawn(async move {
            metrics::counter!("weir_serving_pg_connections_total").increment(1);
            if let Err(e) = datafusion_postgres::pgwire::tokio::process_socket(socket, None, connection).await {
                tracing::debug!(%peer, error = %e, "PostgreSQL connection ended");
            }
        });
    }
}

impl Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection")
    }
}
