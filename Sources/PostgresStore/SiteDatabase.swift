package import Config
package import Logging
package import PostgresNIO
import Store
import Synchronization
import _ConnectionPoolModule

#if canImport(Glibc)
    import Glibc
#endif

/// The PostgreSQL store: one database that several carespool hosts share. A pool of connections
/// (postgres-nio's `PostgresClient`), transactions that retry by themselves on serialization failure and
/// deadlock, and the frozen migrations applied under an advisory lock.
package final class SiteDatabase: Sendable {
    package let client: PostgresClient
    package let target: PostgresTarget
    /// This host's name, as its files' ledger rows and the migrations it applied record it.
    package let host: String
    let logger: Logger
    private let runner: Task<Void, Never>
    private let password: String?

    /// A pool to `target`; nothing connects until the first query. `password` is the role's, read from
    /// `[database] password_file` (nil: the server's peer or trust authentication).
    package init(
        target: PostgresTarget,
        password: String?,
        host: String = SiteDatabase.hostName,
        maximumConnections: Int = 8,
        logger: Logger = Logger(label: "carespool.postgres")
    ) throws(PostgresStoreError) {
        var configuration: PostgresClient.Configuration
        switch target.endpoint {
        case .socket(let path):
            configuration = .init(
                unixSocketPath: path,
                username: target.user,
                password: password,
                database: target.database
            )
        case .tcp(let name, let port):
            let tls: PostgresClient.Configuration.TLS =
                switch Self.tlsSettings(target.tls) {
                case nil: .disable
                case let (settings, required)?: required ? .require(settings) : .prefer(settings)
                }
            configuration = .init(
                host: name,
                port: port,
                username: target.user,
                password: password,
                database: target.database,
                tls: tls
            )
        }
        configuration.options.maximumConnections = max(1, maximumConnections)
        configuration.options.connectTimeout = .seconds(10)
        configuration.options.additionalStartupParameters = [("application_name", "carespool")]
        let client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        self.client = client
        self.password = password
        self.target = target
        self.host = host
        self.logger = logger
        runner = Task { await client.run() }
    }

    /// Ends the pool: open connections are closed.
    package func close() async {
        runner.cancel()
        await runner.value
    }

    /// The machine's host name (`gethostname`), what the ledger's `host` says by default.
    package static var hostName: String { AppDatabase.machineName }

    /// The most tries of one transaction that fails on serialization (40001) or deadlock (40P01).
    package static let transactionTries = 8

    /// `body` in one transaction, run again from the start when PostgreSQL aborts it for a serialization
    /// failure or a deadlock (after a short random pause that doubles each time: the hosts that collided
    /// do not collide again in step). Any other error ends it; the transaction is rolled back.
    package func transaction<Result: Sendable>(
        _ body: @escaping @Sendable (PostgresConnection) async throws -> Result
    ) async throws(PostgresStoreError) -> Result {
        var pause = 5
        for attempt in 1...Self.transactionTries {
            do {
                return try await leased { connection in
                    try await connection.query("BEGIN", logger: self.logger)
                    do {
                        let result = try await body(connection)
                        try await connection.query("COMMIT", logger: self.logger)
                        return result
                    } catch {
                        // A connection that is gone has no transaction to roll back.
                        _ = try? await connection.query("ROLLBACK", logger: self.logger)
                        throw error
                    }
                }
            } catch {
                let failure = PostgresStoreError(error)
                guard failure.retryable, attempt < Self.transactionTries else { throw failure }
                logger.debug("transaction retried", metadata: ["sqlstate": "\(failure.sqlState ?? "")"])
                try? await Task.sleep(for: .milliseconds(Int.random(in: pause...(2 * pause))))
                pause *= 2
            }
        }
        throw PostgresStoreError(description: "unreachable", transient: false)
    }

    /// How long a transaction waits for a connection of the pool: past it the server counts as down (the
    /// pool, left alone, waits for a new connection for as long as it keeps retrying, a minute or more,
    /// and the pipeline with it). Once it has a connection, a transaction takes as long as its work — unless
    /// that connection closes.
    package static let connectionWait: Duration = .seconds(10)

    /// `body` with a connection of the pool. Ends with a transient error when no connection is had within
    /// ``connectionWait``, or as soon as the connection closes under the work (the server stopped or
    /// ended the backend): postgres-nio's query on a channel that closed may never answer, and a task
    /// group would wait for it for ever. So the work runs in a task of its own, left behind when either
    /// happens (its connection is closed; it holds nothing else), and the caller is answered at once.
    private func leased<Result: Sendable>(
        _ body: @escaping @Sendable (PostgresConnection) async throws -> Result
    ) async throws -> Result {
        let answer = Answer<Result>()
        let client = client
        let held = Held()
        return try await withCheckedThrowingContinuation { continuation in
            answer.arm(continuation)
            let work = Task(executorPreference: SiteStore.executor) {
                do {
                    let result = try await client.withConnection { connection in
                        held.set(connection)
                        return try await body(connection)
                    }
                    answer.succeed(result)
                } catch {
                    answer.fail(error)
                }
            }
            // Watches the work until it is answered: no connection in time, or the one it has closed.
            Task(executorPreference: SiteStore.executor) {
                let start = ContinuousClock.now
                while !answer.given {
                    try? await Task.sleep(for: .milliseconds(250))
                    if let connection = held.connection {
                        guard connection.isClosed else { continue }
                        answer.fail(
                            PostgresStoreError(
                                description: "PostgreSQL: the connection closed during the transaction",
                                transient: true
                            )
                        )
                    } else if ContinuousClock.now - start >= Self.connectionWait {
                        answer.fail(
                            PostgresStoreError(
                                description: "PostgreSQL: no connection within \(Self.connectionWait) (the server is "
                                    + "down or unreachable)",
                                transient: true
                            )
                        )
                        work.cancel()
                    }
                }
            }
        }
    }

    /// The TLS settings of libpq's `sslmode` over TCP, and whether TLS is required; nil: no TLS. `prefer`
    /// and `require` encrypt without checking whose certificate it is (as libpq's do); `verify-full`
    /// checks the server's name against the system's trusted certificates.
    package static func tlsSettings(_ mode: PostgresTarget.TLSMode) -> (TLSConfiguration, required: Bool)? {
        var settings = TLSConfiguration.makeClientConfiguration()
        switch mode {
        case .disable: return nil
        case .prefer, .require:
            settings.certificateVerification = .none
            return (settings, mode == .require)
        case .verifyFull: return (settings, true)
        }
    }

    /// One connection made and closed outside the pool, to learn at once why the server cannot be used
    /// (the pool retries a failing login for a minute and then reports only that it gave up): a refused
    /// login or a missing database is not transient; no server is.
    package func probe() async throws(PostgresStoreError) {
        var configuration: PostgresConnection.Configuration
        switch target.endpoint {
        case .socket(let path):
            configuration = .init(
                unixSocketPath: path,
                username: target.user,
                password: password,
                database: target.database
            )
        case .tcp(let name, let port):
            let tls: PostgresConnection.Configuration.TLS
            do {
                if let (settings, required) = Self.tlsSettings(target.tls) {
                    let context = try NIOSSLContext(configuration: settings)
                    tls = required ? .require(context) : .prefer(context)
                } else {
                    tls = .disable
                }
            } catch {
                throw PostgresStoreError(description: "PostgreSQL: TLS cannot be set up: \(error)", transient: false)
            }
            configuration = .init(
                host: name,
                port: port,
                username: target.user,
                password: password,
                database: target.database,
                tls: tls
            )
        }
        configuration.options.connectTimeout = .seconds(10)
        do {
            let connection = try await PostgresConnection.connect(configuration: configuration, id: 0, logger: logger)
            try await connection.close()
        } catch {
            throw PostgresStoreError(error)
        }
    }

    // MARK: - Migrations

    package struct AppliedMigration: Sendable, Equatable {
        package var version: Int
        package var name: String
        package var digest: String
        package var appliedBy: String
    }

    /// Applies the migrations the database lacks, under the advisory lock, in one transaction (PostgreSQL's
    /// DDL is transactional: a host killed half-way leaves nothing half-made). Returns the versions this
    /// call applied; none when another host got there first. A database whose record names a migration
    /// this build lacks (a newer build's) or whose digest differs from the frozen SQL is refused, untouched.
    @discardableResult
    package func migrate() async throws(PostgresStoreError) -> [Int] {
        let host = host
        let logger = logger
        let target = target
        return try await transaction { connection in
            try await Self.checkCharacterType(connection, target, logger)
            try await connection.query(
                "SELECT pg_advisory_xact_lock(\(PostgresMigrations.advisoryLock))",
                logger: logger
            )
            try await connection.query(PostgresQuery(unsafeSQL: PostgresMigrations.ledger), logger: logger)
            let recorded = try await Self.applied(connection, logger: logger)
            try Self.check(recorded)
            var applied: [Int] = []
            for migration in PostgresMigrations.all where !recorded.contains(where: { $0.version == migration.version })
            {
                for statement in migration.statements {
                    try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                try await connection.query(
                    """
                    INSERT INTO carespool_migrations (version, name, digest, applied_by)
                    VALUES (\(migration.version), \(migration.name), \(migration.digest), \(host))
                    """,
                    logger: logger
                )
                applied.append(migration.version)
            }
            try await Self.checkTables(connection, target, logger)
            return applied
        }
    }

    /// The live tables are those the migrations make (``LiveTables``): refused, naming the differences,
    /// when a table was changed by hand. Run by `migrate` (and so at every `serve` start) and by
    /// `migrate --check`.
    package func checkTables() async throws(PostgresStoreError) {
        let logger = logger
        let target = target
        try await transaction { connection in
            try await Self.checkCharacterType(connection, target, logger)
            try await Self.checkTables(connection, target, logger)
        }
    }

    static func checkTables(_ connection: PostgresConnection, _ target: PostgresTarget, _ logger: Logger)
        async throws
    {
        let differences: [String]
        do {
            differences = try await LiveTables.differences(connection, logger)
        } catch let error as PSQLError where error.serverInfo?[.sqlState] == "42501" {
            throw PostgresStoreError(
                description: "the role may not create temporary tables in \(target.display) (it needs TEMP, which "
                    + "PostgreSQL grants to PUBLIC by default: `GRANT TEMP ON DATABASE … TO …`): carespool checks its "
                    + "tables and stages intake rows in them",
                transient: false
            )
        }
        guard differences.isEmpty else {
            throw PostgresStoreError.foreign(
                description: "the tables of \(target.display) are not those its migrations made (changed by hand?): "
                    + differences.joined(separator: "; ") + ". Nothing was written; restore them as "
                    + "docs/OPERATIONS.md says (or the database from its backup)",
                transient: false
            )
        }
    }

    /// The database's character type must be C (or POSIX): `lower()` then changes ASCII letters only and
    /// text compares by bytes, as in SQLite — under another locale PostgreSQL lower-cases "É" too, and a
    /// report row's e-mail matched a webhook's in one store and not the other (found by the hostile
    /// review). Refused with the way to make one, not worked around.
    static func checkCharacterType(_ connection: PostgresConnection, _ target: PostgresTarget, _ logger: Logger)
        async throws
    {
        let rows = try await connection.query(
            "SELECT datctype FROM pg_database WHERE datname = current_database()",
            logger: logger
        )
        for try await ctype in rows.decode(String.self) where ctype != "C" && ctype != "POSIX" {
            throw PostgresStoreError(
                description:
                    "the database \(target.display) has LC_CTYPE '\(ctype)': carespool needs 'C' (text lower-cased and "
                    + "compared by bytes, as in SQLite); create it with `createdb --locale=C --template=template0`",
                transient: false
            )
        }
    }

    /// What the database records as applied, oldest first (empty before the first migration).
    package func appliedMigrations() async throws(PostgresStoreError) -> [AppliedMigration] {
        let logger = logger
        let target = target
        return try await transaction { connection -> [AppliedMigration] in
            try await Self.checkCharacterType(connection, target, logger)
            let exists = try await connection.query(
                "SELECT to_regclass('carespool_migrations') IS NOT NULL",
                logger: logger
            )
            var found = false
            for try await (flag) in exists.decode(Bool.self) { found = flag }
            guard found else { return [] }
            return try await Self.applied(connection, logger: logger)
        }
    }

    /// The schema is this build's: every frozen migration applied, none unknown, every digest the same.
    package func checkSchema() async throws(PostgresStoreError) {
        let recorded = try await appliedMigrations()
        try Self.check(recorded)
        let missing = PostgresMigrations.all.filter { migration in
            !recorded.contains { $0.version == migration.version }
        }
        if let first = missing.first {
            var error = PostgresStoreError(
                description:
                    "the database \(target.display) lacks migration v\(first.version): run `carespool migrate`",
                transient: false
            )
            error.missingMigration = true
            throw error
        }
    }

    static func applied(_ connection: PostgresConnection, logger: Logger) async throws -> [AppliedMigration] {
        let rows = try await connection.query(
            "SELECT version, name, digest, applied_by FROM carespool_migrations ORDER BY version",
            logger: logger
        )
        var list: [AppliedMigration] = []
        for try await (version, name, digest, by) in rows.decode((Int, String, String, String).self) {
            list.append(AppliedMigration(version: version, name: name, digest: digest, appliedBy: by))
        }
        return list
    }

    static func check(_ recorded: [AppliedMigration]) throws(PostgresStoreError) {
        for entry in recorded {
            guard let frozen = PostgresMigrations.all.first(where: { $0.version == entry.version }) else {
                throw PostgresStoreError.foreign(
                    description: "the database has migration v\(entry.version) (\(entry.name)), which this build "
                        + "does not know: a newer carespool migrated it; run that version",
                    transient: false
                )
            }
            guard frozen.digest == entry.digest else {
                throw PostgresStoreError.foreign(
                    description: "migration v\(entry.version) in the database differs from this build's (digest "
                        + "\(entry.digest.prefix(12))… against \(frozen.digest.prefix(12))…): a shipped migration "
                        + "was edited; nothing was changed",
                    transient: false
                )
            }
        }
    }
}

/// A PostgreSQL store's failure: transient (the server is down or restarting, the connection dropped: a
/// file waits and is tried again) or not (a refused login, a missing database, a schema from elsewhere).
/// Never carries a row's values: only the server's primary message and SQLSTATE.
package struct PostgresStoreError: Error, Sendable, CustomStringConvertible {
    package var description: String
    package var transient: Bool
    package var sqlState: String?
    /// The schema is older than this build's: `carespool migrate` brings it up to date.
    package var missingMigration = false
    /// The schema's record is not this build's (a migration edited or unknown): nothing may be written.
    package var foreignSchema = false

    /// A schema record this build cannot use.
    static func foreign(description: String, transient: Bool) -> PostgresStoreError {
        var error = PostgresStoreError(description: description, transient: transient)
        error.foreignSchema = true
        return error
    }

    /// Serialization failure or deadlock: the transaction is worth running again at once.
    package var retryable: Bool { sqlState == "40001" || sqlState == "40P01" }

    package init(description: String, transient: Bool, sqlState: String? = nil) {
        self.description = description
        self.transient = transient
        self.sqlState = sqlState
    }

    package init(_ error: any Error) {
        if let error = error as? PostgresStoreError {
            self = error
            return
        }
        if error is ConnectionPoolError {
            // The pool gave up on making connections (or was shut down): the server is unreachable for now.
            self.init(description: "PostgreSQL: cannot reach the server (connections keep failing)", transient: true)
            return
        }
        guard let error = error as? PSQLError else {
            self.init(description: "\(error)", transient: true)
            return
        }
        if let server = error.serverInfo {
            let state = server[.sqlState]
            let message = server[.message] ?? "error"
            // Class 08 (connection), 53 (resources), 57P01–57P03 (shutdown, cannot connect now), and the two
            // that a retry settles.
            let transient =
                state.map {
                    $0.hasPrefix("08") || $0.hasPrefix("53") || $0 == "57P01" || $0 == "57P02" || $0 == "57P03"
                        || $0 == "40001" || $0 == "40P01"
                } ?? false
            // A data exception's or a constraint's message may quote a value (`invalid input syntax for
            // type …: "…"`): only its SQLSTATE is kept, so that the description may be logged.
            let quotesValues = state.map { $0.hasPrefix("22") || $0.hasPrefix("23") } ?? false
            self.init(
                description: quotesValues
                    ? "PostgreSQL: a data or constraint error (SQLSTATE \(state ?? "?"))"
                    : "PostgreSQL: \(message) (SQLSTATE \(state ?? "?"))",
                transient: transient,
                sqlState: state
            )
            return
        }
        switch error.code {
        case .connectionError, .serverClosedConnection, .clientClosedConnection, .poolClosed, .uncleanShutdown:
            let cause = error.underlying.map { " (\($0))" } ?? ""
            self.init(description: "PostgreSQL: cannot reach the server: \(error.code)\(cause)", transient: true)
        case .authMechanismRequiresPassword:
            self.init(
                description: "PostgreSQL: the server asks for a password: name the file that holds it with "
                    + "[database] password_file or --db-password-file",
                transient: false
            )
        case .sslUnsupported:
            self.init(
                description: "PostgreSQL: the server does not offer TLS, which sslmode requires",
                transient: false
            )
        default:
            self.init(description: "PostgreSQL: \(error.code)", transient: false)
        }
    }
}

/// The one answer of ``SiteDatabase/leased(_:)``: the first of the work's result, a closed connection
/// and the connection wait resumes the caller; the others are dropped.
final class Answer<Value: Sendable>: Sendable {
    private let state = Mutex<CheckedContinuation<Value, any Error>?>(nil)

    func arm(_ continuation: CheckedContinuation<Value, any Error>) { state.withLock { $0 = continuation } }

    /// Whether the caller was answered.
    var given: Bool { state.withLock { $0 == nil } }

    func succeed(_ value: Value) { state.withLock { $0.take() }?.resume(returning: value) }

    func fail(_ error: any Error) { state.withLock { $0.take() }?.resume(throwing: error) }
}

/// The connection a transaction has, once it has one, for the task that watches it.
final class Held: Sendable {
    private let state = Mutex<PostgresConnection?>(nil)
    func set(_ connection: PostgresConnection) { state.withLock { $0 = connection } }
    var connection: PostgresConnection? { state.withLock { $0 } }
}
