//! A throwaway PostgreSQL database per test, on the server `TEST_DATABASE_URL` names.

use sqlx::Connection;

/// The server the PostgreSQL tests run on, unless `TEST_DATABASE_URL` names another.
/// Its database is only used to create and drop one database per test.
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The URL of the server's administrative database.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned())
}

/// `url` with its database name replaced by `database`, keeping any query parameters.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let (scheme, rest) = base.split_once("://").expect("TEST_DATABASE_URL is a postgres:// URL");
    let authority = rest.split('/').next().unwrap_or(rest);
    match query {
        Some(query) => format!("{scheme}://{authority}/{database}?{query}"),
        None => format!("{scheme}://{authority}/{database}"),
    }
}

pub async fn admin_connection(admin: &str) -> sqlx::PgConnection {
    match sqlx::PgConnection::connect(admin).await {
        Ok(conn) => conn,
        Err(err) => panic!(
            "cannot reach the PostgreSQL test server at `{admin}` (set TEST_DATABASE_URL to another server): {err}"
        ),
    }
}

/// A database created for one test and dropped when the test ends, passed or not.
pub struct TestDatabase {
    admin: String,
    pub name: String,
    /// The URL of the fresh database, for `PostgresStore::open`.
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let admin = admin_url();
        let name = format!("chatkit_test_{:016x}", rand::random::<u64>());
        let mut conn = admin_connection(&admin).await;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|err| panic!("cannot create test database `{name}`: {err}"));
        let _ = conn.close().await;
        let url = with_database(&admin, &name);
        TestDatabase { admin, name, url }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside any async context it could await in, so the database is
        // dropped from a thread with a runtime of its own. `FORCE` ends the
        // sessions a pool may still hold open.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|err| err.to_string())?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.map_err(|err| err.to_string())?;
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .map_err(|err| err.to_string())?;
                let _ = conn.close().await;
                Ok(())
            })
        })
        .join();
        // A panic here while a failing test unwinds would abort the whole run, so a
        // failed drop is only reported.
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("could not drop test database `{}`: {err}", self.name),
            Err(_) => eprintln!("dropping test database `{}` panicked", self.name),
        }
    }
}
