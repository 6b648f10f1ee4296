import ArgumentParser
import Config
import Foundation
import Logging
import Pipeline
import PostgresStore
import Spool
import Store

/// The store an operator command reads and adds its audit rows to: the spool's SQLite file (one host's
/// ledger), or the site's PostgreSQL database (every host's, each row naming its host). A command never
/// creates or migrates a store: `serve` and `migrate` do.
final class OperatorStore {
    let reads: any OperatorReads
    /// How the store is named in messages: the SQLite file's path, or the PostgreSQL URL without secrets.
    let name: String
    private let sqlitePath: String?
    private let site: SiteDatabase?

    private init(reads: any OperatorReads, name: String, sqlitePath: String?, site: SiteDatabase?) {
        self.reads = reads
        self.name = name
        self.sqlitePath = sqlitePath
        self.site = site
    }

    /// The store `options` name. A SQLite file must exist (else nil with `missingIsNil`, an error
    /// otherwise); a PostgreSQL database must answer, with this build's schema: else the command ends
    /// with 69 (unreachable) or 78 (login, database or password file), as `migrate` does.
    static func open(_ options: SpoolOptions, host: String? = nil, missingIsNil: Bool = false) async throws
        -> OperatorStore?
    {
        let config = try options.configOption.load()
        switch try options.location(config) {
        case .sqlite(let path):
            if host != nil {
                throw ValidationError(
                    "--host narrows the rows of a store several hosts share (PostgreSQL); \(path) is this host's alone"
                )
            }
            if missingIsNil && !FileManager.default.fileExists(atPath: path) { return nil }
            return OperatorStore(
                reads: try Operator.database(path, readonly: true),
                name: path,
                sqlitePath: path,
                site: nil
            )
        case .postgres(let target):
            let password: String?
            do {
                password = try Settings.databasePassword(flag: options.dbPasswordFile, config: config)
            } catch let error as ConfigError {
                throw ConfigOption.fail(error)
            }
            // postgres-nio's own logs (queries and their values at debug) never reach an operator's terminal.
            var logger = Logger(label: "carespool.postgres")
            logger.logLevel = .critical
            let site = try SiteDatabase(target: target, password: password, logger: logger)
            do throws(PostgresStoreError) {
                try await site.probe()
                try await site.checkSchema()
            } catch {
                await site.close()
                FileHandle.standardError.write(Data("carespool: \(target.display): \(error.description)\n".utf8))
                throw ExitCode(error.transient ? 69 : error.missingMigration ? 1 : error.foreignSchema ? 65 : 78)
            }
            return OperatorStore(reads: SiteReads(site: site), name: target.display, sqlitePath: nil, site: site)
        }
    }

    /// The SQLite file opened for writing, once per command (its audit rows).
    private var writable: AppDatabase?

    /// Adds an operator action to the audit trail: who (in a shared store, on which host), what, when.
    func audit(action: String, target: String?, detail: String?) throws {
        if let sqlitePath {
            let database = try writable ?? Operator.database(sqlitePath, readonly: false)
            writable = database
            try database.audit(
                at: Clock.timestamp(),
                actor: Operator.actor,
                action: action,
                target: target,
                detail: detail
            )
            return
        }
        try reads.audit(
            at: Clock.timestamp(),
            actor: Operator.actor + " on " + SiteDatabase.hostName,
            action: action,
            target: target,
            detail: detail
        )
    }

    func close() async { await site?.close() }

    /// `body` with the store `options` name, closed afterwards.
    static func reading<T>(
        _ options: SpoolOptions,
        host: String? = nil,
        _ body: (OperatorStore) throws -> T
    ) async throws -> T {
        guard let store = try await open(options, host: host) else { throw ValidationError("no store") }
        do {
            let result = try body(store)
            await store.close()
            return result
        } catch {
            await store.close()
            throw error
        }
    }

    /// The store a command that acts on the local spool (drop, retry, purge) adds its audit rows to,
    /// opened once for all its files; nil when there is none yet or it does not answer (the action is done
    /// whether or not it is recorded, as ``recordQuietly(action:target:detail:)`` says).
    static func forAudit(_ options: SpoolOptions) async -> OperatorStore? {
        try? await open(options, missingIsNil: true)
    }

    /// Adds an audit row if the store takes it; the action it records is done either way.
    func recordQuietly(action: String, target: String?, detail: String?) {
        try? audit(action: action, target: target, detail: detail)
    }
}

/// `--host`: the operator commands' view of a store several hosts share, narrowed to one host's rows.
struct HostOption: ParsableArguments {
    @Option(help: "Only this host's files (a PostgreSQL store several hosts share; the host's --host-name).")
    var host: String?
}
