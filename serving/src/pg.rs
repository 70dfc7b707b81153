//! The PostgreSQL wire endpoint (datafusion-postgres on pgwire): `psql`, Grafana and Metabase
//! query the same catalogue as the HTTP API. Password authentication (user `serving.pg_user`,
//! password: any API token of scope `read` or wider; TLS when `serving.tls` is set); each connection gets its own session over the catalogue as it
//! is when it connects, with PostgreSQL's `pg_catalog` for clients that introspect; only
//! read statements run (queries, `EXPLAIN`, `SET`/`SHOW`, transactions and cursors), everything
//! else is refused with SQLSTATE 25006 (read-only transaction). Statements run under the query
//! timeout and row limit of the HTTP API ([`Limited`]).

use std::{fmt::Debug, sync::Arc, time::Duration};

use async_trait::async_trait;
use datafusion_postgres::{
    DfSessionService, QueryHook,
    hooks::{HookClient, cursor::CursorStatementHook, set_show::SetShowHook, transactions::TransactionStatementHook},
    pgwire::{
        api::{
            ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers,
            auth::{self, DefaultServerParameterProvider, LoginInfo, StartupHandler},
            portal::Portal,
            query::{ExtendedQueryHandler, SimpleQueryHandler},
            results::{QueryResponse, Response},
            store::PortalStore,
        },
        error::{ErrorInfo, PgWireError, PgWireResult},
        messages::{PgWireBackendMessage, PgWireFrontendMessage, startup::Authentication},
    },
};
use deltalake::datafusion::{
    common::ParamValues, logical_expr::LogicalPlan, prelude::SessionContext, sql::sqlparser::ast::Statement,
};
use futures::{Sink, SinkExt as _, StreamExt as _};
use tokio::time::Instant;

use weir_schemas::tokens::{Scope, Tokens};

use crate::catalog::Catalog;

/// Password authentication: user `user`, password any API token whose scope allows `read`.
#[derive(Debug)]
struct TokenAuth {
    user: String,
    tokens: Arc<Tokens>,
    /// Refuse clients that did not ask for TLS (`serving.tls` is set).
    require_tls: bool,
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
                if self.require_tls && !client.is_secure() {
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".into(),
                        "28000".into(),
                        "this server takes TLS connections only: connect with sslmode=verify-full (or require)".into(),
                    ))));
                }
                auth::protocol_negotiation(client, startup).await?;
                auth::save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client.send(PgWireBackendMessage::Authentication(Authentication::CleartextPassword)).await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let given = pwd.into_password()?.password;
                let user = LoginInfo::from_client_info(client).user().unwrap_or_default().to_string();
                if user != self.user || !self.tokens.scope(&given).is_some_and(|s| s.allows(Scope::Read)) {
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

fn limit_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), message)))
}

/// The session's statements under the serving limits: every statement (planning and the rows it
/// streams) must finish within `query_timeout` (SQLSTATE 57014 otherwise), and an answer of more
/// than `max_rows` rows ends with SQLSTATE 54000 after `max_rows` rows — an error rather than a
/// silent cut, since the wire has no "truncated" flag. The memory limit is the connection
/// session's own pool ([`Catalog::connection_context`]).
struct Limited {
    inner: Arc<DfSessionService>,
    timeout: Duration,
    max_rows: usize,
}

/// The error of a statement cancelled at `timeout` (counted as a timed-out query).
fn timed_out(timeout: Duration) -> PgWireError {
    metrics::counter!("weir_serving_queries_total", "outcome" => "timeout").increment(1);
    limit_error("57014", format!("canceling statement: it ran longer than {timeout:?} (serving.query_timeout)"))
}

impl Limited {
    /// `response` with its rows cut off at the deadline and after `max_rows`.
    fn limit(&self, response: Response, deadline: Instant) -> Response {
        let Response::Query(mut query) = response else { return response };
        let rows = std::mem::replace(query.data_rows(), Box::pin(futures::stream::empty()));
        let (max_rows, timeout) = (self.max_rows, self.timeout);
        // State: the rows, how many went out, whether the stream ended with an error.
        let limited = futures::stream::unfold((rows, 0usize, false), move |(mut rows, n, ended)| async move {
            if ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, rows.next()).await {
                Err(_) => Some((Err(timed_out(timeout)), (rows, n, true))),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some((Err(e), (rows, n, true))),
                Ok(Some(Ok(_))) if n >= max_rows => {
                    let message = format!(
                        "the answer has more than {max_rows} rows (serving.max_rows): add a LIMIT or aggregate"
                    );
                    Some((Err(limit_error("54000", message)), (rows, n, true)))
                }
                Ok(Some(Ok(row))) => Some((Ok(row), (rows, n + 1, false))),
            }
        });
        let mut out = QueryResponse::new(query.row_schema(), limited);
        out.set_command_tag(query.command_tag());
        Response::Query(out)
    }
}

#[async_trait]
impl SimpleQueryHandler for Limited {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let deadline = Instant::now() + self.timeout;
        let planned =
            tokio::time::timeout_at(deadline, SimpleQueryHandler::do_query(self.inner.as_ref(), client, query))
                .await
                .map_err(|_| timed_out(self.timeout))??;
        Ok(planned.into_iter().map(|r| self.limit(r, deadline)).collect())
    }
}

#[async_trait]
impl ExtendedQueryHandler for Limited {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = <DfSessionService as ExtendedQueryHandler>::QueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.inner.query_parser()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let deadline = Instant::now() + self.timeout;
        let planned = tokio::time::timeout_at(
            deadline,
            ExtendedQueryHandler::do_query(self.inner.as_ref(), client, portal, max_rows),
        )
        .await
        .map_err(|_| timed_out(self.timeout))??;
        Ok(self.limit(planned, deadline))
    }
}

/// One connection's handlers.
struct Connection {
    service: Arc<Limited>,
    startup: Arc<TokenAuth>,
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }
    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// Accepts PostgreSQL connections on `listener` until `stop` turns true; with `tls`, only
/// connections that negotiate TLS.
pub async fn serve(
    listener: tokio::net::TcpListener,
    catalog: Arc<Catalog>,
    user: String,
    tokens: Arc<Tokens>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let auth = Arc::new(TokenAuth {
        user,
        tokens,
        require_tls: tls.is_some(),
        parameters: DefaultServerParameterProvider::default(),
    });
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
            service: Arc::new(Limited {
                inner: Arc::new(DfSessionService::new_with_hooks(Arc::new(ctx), hooks)),
                timeout: catalog.limits().0,
                max_rows: catalog.limits().1,
            }),
            startup: auth.clone(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            metrics::counter!("weir_serving_pg_connections_total").increment(1);
            if let Err(e) = datafusion_postgres::pgwire::tokio::process_socket(socket, tls, connection).await {
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
