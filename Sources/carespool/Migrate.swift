import ArgumentParser
import Config
import Foundation
import Logging
import PostgresStore
import Store

/// `carespool migrate`: brings the store's schema to this build's, or with `--check` says whether it is.
/// For PostgreSQL the migrations run under an advisory lock, so that hosts started at once migrate the
/// shared database once; `serve` does the same for SQLite at every start.
struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply the store's schema migrations (PostgreSQL: once, whichever host comes first).",
        discussion: """
            Exit status: 0 when the schema is this build's, 1 with --check when migrations are missing, \
            69 (EX_UNAVAILABLE) when the database cannot be reached, 65 (EX_DATAERR) when its schema is \
            not one this build can use (edited or newer migrations, or PostgreSQL tables changed by hand: \
            the difference is named), 78 (EX_CONFIG) when the login, the database named or the password file \
            is wrong.
            """
    )

    @OptionGroup var spoolOptions: SpoolOptions

    @Flag(help: "Apply nothing: say which migrations are missing (exit 1 when any is), or how tables differ from them.")
    var check = false

    func run() async throws {
        let location = try spoolOptions.location()
        switch location {
        case .sqlite(let path):
            if check {
                guard FileManager.default.fileExists(atPath: path) else {
                    print("SQLite \(path): no database yet (serve or migrate creates it)")
                    throw ExitCode(1)
                }
                let pending = try AppDatabase.pendingMigrations(path: path)
                print(
                    "SQLite \(path): " + (pending.isEmpty ? "up to date" : "missing " + pending.joined(separator: ", "))
                )
                if !pending.isEmpty { throw ExitCode(1) }
                return
            }
            let before =
                FileManager.default.fileExists(atPath: path) ? try AppDatabase.pendingMigrations(path: path) : nil
            _ = try AppDatabase.open(path: path)
            let applied =
                before.map { $0.isEmpty ? "up to date" : "applied " + $0.joined(separator: ", ") } ?? "created"
            print("SQLite \(path): \(applied)")
        case .postgres(let target):
            let password: String?
            do {
                password = try Settings.databasePassword(
                    flag: spoolOptions.dbPasswordFile,
                    config: spoolOptions.configOption.load()
                )
            } catch let error as ConfigError {
                throw ConfigOption.fail(error)
            }
            var logger = Logger(label: "carespool.postgres")
            logger.logLevel = .critical
            let database = try SiteDatabase(target: target, password: password, logger: logger)
            let outcome: Result<String, PostgresStoreError>
            do throws(PostgresStoreError) {
                try await database.probe()
                if check {
                    try await database.checkSchema()
                    try await database.checkTables()
                    let version = try await database.appliedMigrations().last?.version ?? 0
                    outcome = .success("\(target.display): up to date at v\(version)")
                } else {
                    let applied = try await database.migrate()
                    let version = try await database.appliedMigrations().last?.version ?? 0
                    outcome = .success(
                        applied.isEmpty
                            ? "\(target.display): up to date at v\(version)"
                            : "\(target.display): applied " + applied.map { "v\($0)" }.joined(separator: ", ")
                                + " as host \(database.host); now at v\(version)"
                    )
                }
            } catch {
                outcome = .failure(error)
            }
            await database.close()
            switch outcome {
            case .success(let line): print(line)
            case .failure(let error):
                FileHandle.standardError.write(Data("carespool migrate: \(error.description)\n".utf8))
                if error.missingMigration { throw ExitCode(1) }
                // 65: a schema this build cannot use; 69: no server now; 78: the login or the database named.
                throw ExitCode(error.transient ? 69 : error.foreignSchema ? 65 : 78)
            }
        }
    }
}
