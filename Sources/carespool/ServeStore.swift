import ArgumentParser
import Config
import Foundation
import Kinds
import Logging
import PostgresStore
import Store

/// What the HTTP door and the health report ask of the store, whichever it is.
protocol DoorStore: Sendable {
    /// The verdict on file `id` of `kind` and who sent it; nil when the ledger has no row (or cannot say).
    func verdict(id: String, kind: String) async -> (report: FileReport, sender: String?)?
    /// Zoom's webhook counters; nil when the database does not answer (`/health` says it is down).
    func counters() async -> [(event: String, received: Int, inserted: Int)]?
}

struct SQLiteDoor: DoorStore {
    let database: AppDatabase

    func verdict(id: String, kind: String) async -> (report: FileReport, sender: String?)? {
        (try? database.verdict(id: id, kind: kind)) ?? nil
    }

    func counters() async -> [(event: String, received: Int, inserted: Int)]? { try? database.zoomCounters() }
}

struct SiteDoor: DoorStore {
    let site: SiteDatabase

    func verdict(id: String, kind: String) async -> (report: FileReport, sender: String?)? {
        (try? await site.verdict(id: id, kind: kind)) ?? nil
    }

    func counters() async -> [(event: String, received: Int, inserted: Int)]? { try? await site.zoomCounters() }
}

extension Serve {
    /// The site's PostgreSQL database, reached, and migrated (under the advisory lock: hosts started at once
    /// migrate it once). Unreachable: exit 69 (EX_UNAVAILABLE), for systemd to start the daemon again
    /// later; a refused login, a missing database, a schema this build cannot use: exit 78 (EX_CONFIG).
    static func openSite(
        _ target: PostgresTarget,
        hostName: String?,
        settings: Settings,
        logger: Logger
    ) async throws -> SiteDatabase {
        let password = settings.databasePassword
        // postgres-nio logs queries (their values among them) at debug and trace: never patient data in
        // the daemon's logs, so its logger stops at warning, whatever log_level says.
        var quiet = logger
        quiet.logLevel = max(logger.logLevel, .warning)
        let site = try SiteDatabase(
            target: target,
            password: password,
            host: hostName ?? SiteDatabase.hostName,
            maximumConnections: 4,
            logger: quiet
        )
        do throws(PostgresStoreError) {
            try await site.probe()
            let applied = try await site.migrate()
            logger.notice(
                "PostgreSQL store ready",
                metadata: [
                    "store.host": "\(site.host)",
                    "store.migrations_applied": "\(applied.count)",
                ]
            )
        } catch {
            await site.close()
            FileHandle.standardError.write(Data("carespool: \(target.display): \(error.description)\n".utf8))
            throw ExitCode(error.transient ? 69 : 78)
        }
        return site
    }
}
