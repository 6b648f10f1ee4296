// carespool: the executable. Parses commands, builds the configuration once, bootstraps logging (the
// only place that does), and runs the service group. Everything else lives in the library targets.

import ArgumentParser
import Config
import Foundation
import HTTPIngress
import Hummingbird
import HummingbirdCore
import JSONSchema
import Kinds
import Logging
import Metrics
import Notify
import Pipeline
import PostgresStore
import Prometheus
import ServiceLifecycle
import Spool
import Store
import Systemd
import UnixSignals

@main
struct Carespool: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "carespool",
        abstract: "File-drop and spool daemon for healthcare integration data.",
        subcommands: [
            Serve.self, Status.self, Failed.self, Show.self, Validate.self, Drop.self, Retry.self, Purge.self,
            Query.self, Report.self, Audit.self, ConfigCommand.self, Migrate.self,
        ]
    )
}

/// The configuration file: `--config FILE`, else `$CARESPOOL_CONFIG`, else /etc/carespool/carespool.toml
/// when it exists (else built-in defaults). A bad file ends the command with status 78 (EX_CONFIG).
struct ConfigOption: ParsableArguments {
    static let defaultPath = "/etc/carespool/carespool.toml"

    @Option(help: "The configuration file (default: $CARESPOOL_CONFIG, else \(Self.defaultPath) when it exists).")
    var config: String?

    /// The file's path, or nil when none is named and the default does not exist.
    var path: String? { Self.path(config) }

    func load() throws -> ConfigFile { try Self.load(path) }

    static func path(_ explicit: String?) -> String? {
        if let explicit { return explicit }
        if let named = ProcessInfo.processInfo.environment["CARESPOOL_CONFIG"], !named.isEmpty { return named }
        return FileManager.default.fileExists(atPath: defaultPath) ? defaultPath : nil
    }

    /// The file at `path` read and checked (no file: empty settings); exit 78 when it is bad.
    static func load(_ path: String?) throws -> ConfigFile {
        guard let path else { return ConfigFile() }
        do {
            // FileHandle, not FileManager.contents: /dev/null (no configuration) must read as empty.
            guard let handle = FileHandle(forReadingAtPath: path), let data = try? handle.readToEnd() ?? Data() else {
                throw ConfigError(path: path, line: nil, key: nil, message: "cannot read the configuration file")
            }
            return try ConfigFile(
                text: String(decoding: data, as: UTF8.self),
                path: path,
                kinds: Kind.allCases.map(\.rawValue),
                routes: Kind.allCases.filter(\.hasHTTPRoute).map(\.rawValue)
            )
        } catch let error as ConfigError {
            throw Self.fail(error)
        }
    }

    /// Prints a configuration error and returns exit status 78 (EX_CONFIG) to throw.
    static func fail(_ error: ConfigError) -> ExitCode {
        FileHandle.standardError.write(Data(("carespool: " + error.description + "\n").utf8))
        return ExitCode(78)
    }
}

/// Options every command that touches a spool shares: flags first, then the configuration file.
struct SpoolOptions: ParsableArguments {
    @OptionGroup var configOption: ConfigOption

    @Option(help: "The spool folder (default: the config's spool, else ./spool).")
    var spool: String?

    @Option(
        help: """
            The store: a SQLite file, or postgres://USER@HOST:PORT/DB (postgres:///DB?host=/run/postgresql \
            over a Unix socket) (default: the config's database, else <spool>/carespool.sqlite3).
            """
    )
    var db: String?

    @Option(
        help: """
            The file holding the PostgreSQL role's password (an absolute path, or a systemd credential's name) \
            (default: the config's [database] password_file). Never the password itself.
            """
    )
    var dbPasswordFile: String?

    /// The store in effect: `--db`, else the configuration's, else the spool's SQLite file. (The
    /// PostgreSQL role's password is read by `Settings.databasePassword`.)
    func location(_ loaded: ConfigFile? = nil) throws -> DatabaseLocation {
        let config = try loaded ?? configOption.load()
        let root = spool ?? config.spool ?? "spool"
        let text = db ?? config.database ?? (root + "/carespool.sqlite3")
        let location: DatabaseLocation
        do throws(DatabaseURLError) {
            location = try DatabaseLocation.parse(text)
        } catch {
            throw ValidationError("--db: \(error.description)")
        }
        if case .sqlite = location, dbPasswordFile != nil {
            throw ValidationError("--db-password-file: a SQLite file has no password")
        }
        return location
    }

    /// The spool and database paths in effect, the configuration file, and the spool with its extra
    /// inboxes.
    func resolved() throws -> (spool: Spool, database: String, config: ConfigFile) {
        let config = try configOption.load()
        let root = spool ?? config.spool ?? "spool"
        // A folder is one inbox: the spool's own inboxes and the configured ones, trailing slashes aside
        // (listed twice, a folder was scanned under two rules and its files counted twice).
        // Compared absolute: a relative spool is under the working directory.
        func normal(_ path: String) -> String {
            ConfigFile.normalized(path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path)
        }
        let trimmedRoot = normal(root)
        var taken = Set(Kind.allCases.map { trimmedRoot + "/inbox/" + $0.rawValue })
        var extra: [Spool.Inbox] = []
        for inbox in config.inboxes {
            let path = normal(inbox.path)
            guard taken.insert(path).inserted else {
                throw ValidationError("inbox \(path) is listed twice, or is one of the spool's own inboxes")
            }
            extra.append(
                Spool.Inbox(
                    path: path,
                    kind: inbox.kind,
                    arrival: Spool.Arrival(rawValue: inbox.arrival) ?? .close,
                    note: inbox.kind == Kind.zoomReport.rawValue
                        ? LocalTimes(config.inboxTimes[inbox.path] ?? config.zoomReportTimes).note : nil
                )
            )
        }
        var spool = Spool(root: root, kinds: Kind.allCases.map(\.rawValue), extraInboxes: extra)
        // Every Zoom report claimed carries its inbox's local times beside it until its verdict.
        for index in spool.inboxes.indices where spool.inboxes[index].kind == Kind.zoomReport.rawValue {
            if spool.inboxes[index].note == nil { spool.inboxes[index].note = LocalTimes(config.zoomReportTimes).note }
        }
        spool.decompression = config.decompressionLimits
        // A PostgreSQL store is named without secrets; the commands read it through OperatorStore.
        let database: String
        switch try location(config) {
        case .sqlite(let path): database = path
        case .postgres(let target): database = target.display
        }
        return (spool, database, config)
    }
}

struct SchemaOption: ParsableArguments {
    @Option(
        help: """
            The JSON Schema file with one $defs entry per record kind (default: the config's schema, else \
            ./schema.json, else the installed PREFIX/share/carespool/schema.json).
            """
    )
    var schema: String?

    /// Where `make install` puts schema.json for the running binary: PREFIX/bin/carespool has it in
    /// PREFIX/share/carespool/.
    static var installedPath: String {
        let executable =
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: executable).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("share/carespool/schema.json").path
    }

    /// The places tried, in order, when neither `--schema` nor the configuration names the schema: the
    /// working directory's (a source tree), the one installed beside this binary, the default install's.
    static var defaultCandidates: [String] {
        var candidates = ["schema.json", installedPath]
        if !candidates.contains("/usr/share/carespool/schema.json") {
            candidates.append("/usr/share/carespool/schema.json")
        }
        return candidates
    }

    /// The schema used when neither `--schema` nor the configuration names one: the first of
    /// ``defaultCandidates`` that exists, nil when none does.
    static var defaultPath: String? {
        defaultCandidates.first { FileManager.default.fileExists(atPath: $0) }
    }

    func catalog(config: ConfigFile) throws -> Catalog {
        guard let schema = self.schema ?? config.schema ?? Self.defaultPath else {
            throw ValidationError(
                "cannot find the schema file: none of \(Self.defaultCandidates.joined(separator: ", ")) exists "
                    + "(pass --schema FILE, or set schema in the configuration file)"
            )
        }
        guard let data = FileManager.default.contents(atPath: schema) else {
            throw ValidationError("cannot read the schema file \(schema) (pass --schema FILE)")
        }
        do {
            return try Catalog(schemaBytes: Array(data))
        } catch {
            throw ValidationError("\(schema): \(error.description)")
        }
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the daemon in the foreground: watch the inboxes, store, move files to done/ or failed/.",
        discussion: """
            Every option overrides the configuration file's setting of the same name; what neither sets
            has the default shown. `carespool config check` prints the settings in effect.
            """
    )

    @OptionGroup var spoolOptions: SpoolOptions
    @OptionGroup var schemaOption: SchemaOption

    @Option(help: "Milliseconds a file found by rescan must hold still (size and mtime) before it is claimed (2000).")
    var settleMs: Int?

    @Option(
        help: """
            This host's name in the ledger, which names the host of every verdict (default: the machine's host \
            name; give each host of a site sharing a PostgreSQL store its own).
            """
    )
    var hostName: String?

    @Option(
        help: """
            Milliseconds a file its writer still holds open must stay unchanged before it is claimed anyway; \
            until then it waits for the close (600000).
            """
    )
    var openHoldMs: Int?

    @Option(
        help: """
            Milliseconds a file written in place under its name (closed, not renamed in) must stay closed and \
            unchanged before it is claimed: its writer may still set its times and mode (1000).
            """
    )
    var closeGraceMs: Int?

    @Option(help: "Milliseconds between full rescans of every inbox (5000).")
    var rescanMs: Int?

    @Option(help: "Most files committed in one transaction (512).")
    var batchSize: Int?

    @Option(help: "Bytes above which NDJSON or a JSON array is streamed in bounded chunks, not read whole (8 MiB).")
    var streamThreshold: Int?

    @Option(
        help: "MiB of memory the daemon plans for: batches, streamed chunks, the record limit, bodies held (256)."
    )
    var memoryBudget: Int?

    @Option(
        help: "Milliseconds a database write waits for another connection's lock before it is retried later (10000)."
    )
    var busyTimeoutMs: Int?

    @Option(
        help: """
            Milliseconds a large file's records may stay uncommitted, holding the database's write lock: \
            longer is faster with keys in no order, shorter lets operators' commands wait less (5000).
            """
    )
    var chunkCommitMs: Int?

    @Option(help: "Days finished files stay in done/ before they are removed; the ledger keeps their rows (30).")
    var retentionDays: Int?

    @Option(help: "HTTP listen address HOST:PORT, or off (127.0.0.1:8080).")
    var http: String?

    @Option(
        help:
            "A bearer token NAME:SECRET:ROUTES (routes: appointments, zoom, intake, or *); repeatable; replaces the config's tokens."
    )
    var httpToken: [String] = []

    @Option(help: "Zoom webhook secret token (give two during a rotation); repeatable; replaces the config's.")
    var zoomSecret: [String] = []

    @Option(
        help:
            "A file holding a Zoom secret token (an absolute path, or a systemd credential's name in $CREDENTIALS_DIRECTORY); repeatable; replaces the config's."
    )
    var zoomSecretFile: [String] = []

    @Option(
        help:
            "ROUTE:FILE, a file holding a Standard Webhooks secret (absolute, or a credential's name); repeatable; replaces the config's."
    )
    var webhookSecretFile: [String] = []

    @Option(
        help:
            "NAME:FILE:ROUTES, a bearer token whose secret is in FILE (absolute, or a credential's name); repeatable; replaces the config's tokens."
    )
    var httpTokenFile: [String] = []

    @Option(
        help:
            "A Standard Webhooks secret ROUTE:SECRET (whsec_…; routes: appointments, zoom, intake); repeatable, two for a rotation; replaces the config's."
    )
    var webhookSecret: [String] = []

    @Option(
        help:
            "A route (appointments, zoom, intake, or *) opened without credentials; loopback only; repeatable; replaces the config's open_routes. A route with no credential and not opened answers 401."
    )
    var httpOpen: [String] = []

    @Option(help: "HTTP requests a second per sender (token bucket, same burst; 429 with Retry-After); 0 for none (0).")
    var httpRate: Double?

    @Option(help: "HTTP answers 503 while an inbox holds this many files (20000).")
    var inboxHighWater: Int?

    @Option(help: "HTTP answers 503 while the spool's filesystem has fewer MiB free than this (256).")
    var diskReserveMib: Int?

    @Option(help: "Seconds a connection may take to send a request head, and stay idle between requests (10).")
    var httpHeaderTimeout: Int?

    @Option(help: "Seconds a request body may take to arrive; 408 after that (60).")
    var httpBodyTimeout: Int?

    @Option(help: "Most HTTP connections open at once; more wait in the listen backlog (1024).")
    var httpMaxConnections: Int?

    @Option(help: "Largest webhook body in bytes; 413 over it (1 MiB).")
    var webhookBodyLimit: Int?

    @Option(help: "Largest POST /ingest body in bytes; 413 over it (64 MiB).")
    var ingestBodyLimit: Int?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (info).")
    var logLevel: String?

    @Option(
        help: ArgumentHelp(
            "Send log entries with their fields (MESSAGE_ID, CARESPOOL_FILE_ID, …) to journald's native socket "
                + "at this path (default: /run/systemd/journal/socket when stderr is the journal).",
            valueName: "socket"
        )
    )
    var logJournal: String?

    @Option(help: .hidden)
    var testEnospcWhile: String?

    /// Test only: a file whose name contains this crashes the daemon (the crash guard's tests).
    @Option(help: .hidden)
    var testCrashOn: String?

    func run() async throws {
        Processor.tuneMemory()
        // Files the daemon creates are its own and its group's (operators) only: at least umask 027, as
        // the unit's UMask= sets it (docs/SECURITY.md), also when started by hand.
        umask(umask(0o027) | 0o027)
        let (resolvedSpool, databasePath, config) = try spoolOptions.resolved()
        let location = try spoolOptions.location(config)
        var faulty = resolvedSpool
        // Test-only: the file layer fails writes with ENOSPC while this file exists (SpoolFaults).
        faulty.faults.enospcWhile = testEnospcWhile
        let spool = faulty
        let settings: Settings
        do {
            settings = try Settings(serve: self, config: config)
        } catch let error as ConfigError {
            throw ConfigOption.fail(error)
        }
        // Under systemd with stderr to the journal: entries with their fields on journald's native socket
        // (MESSAGE_ID for alerting), else stderr lines with priority prefixes; no timestamps (the journal's own).
        let journalSocket = logJournal ?? (Systemd.stderrIsJournal ? Systemd.journalSocket : nil)
        if let journalSocket { JournalLogHandler.connect(journalSocket) }
        let journal = journalSocket != nil || Systemd.stderrIsJournal
        LoggingSystem.bootstrap { label in
            if journal {
                var handler = JournalLogHandler(label: label)
                handler.logLevel = settings.logLevel
                return handler
            }
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = settings.logLevel
            return handler
        }
        let logger = Logger(label: "carespool")
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets["carespool_file_latency_seconds"] = [
            .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
            .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5),
            .seconds(10), .seconds(30), .seconds(60), .seconds(300),
        ]
        factory.durationHistogramBuckets["carespool_http_sync_seconds"] = [
            .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
            .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1),
        ]
        MetricsSystem.bootstrap(factory)
        let catalog = try schemaOption.catalog(config: config)
        try spool.prepare()
        // Files are claimed by rename: an inbox on another filesystem than the spool could never be.
        for (index, inbox) in config.inboxes.enumerated() {
            var inboxStat = stat()
            var spoolStat = stat()
            guard stat(inbox.path, &inboxStat) == 0, stat(spool.root, &spoolStat) == 0 else {
                throw ConfigOption.fail(config.error("inbox[\(index)].path", "\(inbox.path) cannot be read"))
            }
            if inboxStat.st_dev != spoolStat.st_dev {
                throw ConfigOption.fail(
                    config.error("inbox[\(index)].path", "is on another filesystem than the spool \(spool.root)")
                )
            }
        }
        let store: any PipelineStore
        let door: any DoorStore
        // The notification queue the notifier works through: the SQLite file's, or this host's share of the
        // PostgreSQL database's.
        var queue: (any OwedNotifications)?
        let policy = settings.notifier.flatMap { notifier in
            config.notify.map { NotifyPolicy(outcomes: Set($0.outcomes), targets: notifier.targets) }
        }
        // The processor's spool: with the PostgreSQL store, only the inboxes of the kinds it writes.
        if let hostName, hostName.isEmpty || hostName.utf8.count > 255 || hostName.contains(where: \.isNewline) {
            throw ValidationError("--host-name: one line of 1 to 255 bytes")
        }
        switch location {
        case .sqlite:
            var opened = try AppDatabase.open(
                path: databasePath,
                busyTimeout: .milliseconds(settings.busyTimeoutMs),
                cacheBytes: settings.pipeline.memoryBudget / 8,
                chunkCommit: .milliseconds(settings.chunkCommitMs)
            )
            if let policy { opened.notify = policy }
            opened.host = hostName ?? AppDatabase.machineName
            store = opened
            door = SQLiteDoor(database: opened)
            queue = opened
        case .postgres(let target):
            let site = try await Self.openSite(
                target,
                hostName: hostName,
                settings: settings,
                logger: logger
            )
            store = SiteStore(site: site, notify: policy ?? NotifyPolicy())
            door = SiteDoor(site: site)
            queue = SiteNotifications(site: site)
        }
        let readiness = Readiness(http: settings.http != nil)
        var pipeline = settings.pipeline
        pipeline.testCrashOn = testCrashOn
        let processor = Processor(
            spool: spool,
            database: store,
            catalog: catalog,
            configuration: pipeline,
            logger: logger,
            heartbeat: { first in
                if first { readiness.processorReady() }
                Systemd.watchdogPing()
            }
        )
        let health = HealthCache()
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: processor)]
        if let notifier = settings.notifier, let queue {
            services.append(.init(service: Notifier(database: queue, configuration: notifier, logger: logger)))
        } else if let queue, let dropped = try? await queue.dropNotifications(except: []), dropped > 0 {
            // [notify] removed: what was owed would show in `status` for ever.
            logger.warning(
                "notifications dropped: their target is no longer configured",
                metadata: ["notify.dropped": "\(dropped)"]
            )
        }
        if var http = settings.http {
            http.schemaConstants = catalog.schemaConstants
            services.append(
                .init(
                    service: Self.httpApplication(
                        http,
                        spool: spool,
                        database: door,
                        health: health,
                        registry: registry,
                        logger: logger,
                        onServerRunning: { readiness.httpReady() }
                    )
                )
            )
        }
        services.append(
            .init(
                service: SystemdNotifier(
                    readiness: readiness,
                    status: {
                        let report = await health.report { await Self.health(spool: spool, database: door) }
                        return "inbox \(report.inbox), processing \(report.processing), failed \(report.failed)"
                            + (report.databaseUp ? "" : ", database down")
                    },
                    logger: logger
                ),
                successTerminationBehavior: .ignore
            )
        )
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        logger.notice("carespool serving", metadata: ["spool.inboxes": "\(spool.inboxes.count)"])
        try await group.run()
        logger.notice("carespool stopped")
    }
}

extension Serve {
    /// The HTTP endpoint as a service of the group.
    static func httpApplication(
        _ configuration: HTTPConfiguration,
        spool: Spool,
        database: any DoorStore,
        health cache: HealthCache,
        registry: PrometheusCollectorRegistry,
        logger: Logger,
        onServerRunning: @escaping @Sendable () -> Void
    ) -> any Service {
        let router = buildRouter(
            configuration: configuration,
            spool: spool,
            health: { await cache.report { await Self.health(spool: spool, database: database) } },
            metrics: {
                // Queue depths and the database's state at scrape time (the health report, cached 1 s).
                let report = await cache.report { await Self.health(spool: spool, database: database) }
                for (queue, depth) in [
                    ("inbox", report.inbox), ("processing", report.processing), ("failed", report.failed),
                ] {
                    Gauge(label: "carespool_queue_files", dimensions: [("queue", queue)]).record(depth)
                }
                Gauge(label: "carespool_database_up").record(report.databaseUp ? 1 : 0)
                // How long the oldest file of each kind's inboxes has waited (0: none waits): a file stuck
                // there — the daemon stopped, a writer holding it open, no permission — shows here first.
                let now = Clock.nowNanos()
                for kind in spool.kinds {
                    let arrived = (try? spool.oldestInInboxes(of: kind)) ?? nil
                    let waited = arrived.map { max(0, now.subtractingReportingOverflow($0).partialValue) } ?? 0
                    Gauge(label: "carespool_inbox_oldest_seconds", dimensions: [("kind", kind)])
                        .record(Double(waited) / 1e9)
                }
                return registry.emitToString()
            },
            verdict: { id, kind in
                guard let (report, sender) = await database.verdict(id: id, kind: kind) else { return nil }
                return SpoolVerdict(
                    sender: sender,
                    outcome: report.outcome.rawValue,
                    stored: report.stored,
                    duplicates: report.duplicates,
                    rejected: report.rejected,
                    errors: report.errors.map { ($0.record, $0.line, $0.pointer, $0.message) }
                )
            }
        )
        // Socket activation: systemd bound the port and passed the socket.
        if let socket = ActivatedServer.passedSocket() {
            return ActivatedServer(
                socket: socket,
                responder: router.buildResponder(),
                configuration: configuration,
                logger: logger,
                onServerRunning: onServerRunning
            )
        }
        return Application(
            router: router,
            server: .http1(configuration: .init(idleTimeout: .init(configuration.headerTimeout))),
            configuration: .init(
                address: .hostname(configuration.host, port: configuration.port),
                serverName: "carespool",
                backlog: 1_024,
                availableConnectionsDelegate: MaximumAvailableConnections(configuration.maxConnections, logger: logger)
            ),
            onServerRunning: { _ in onServerRunning() },
            logger: logger
        )
    }

    /// Database reachable, Zoom events received and inserted, and queue depths.
    static func health(spool: Spool, database: any DoorStore) async -> HealthReport {
        let counters = await database.counters()
        /// `count` of each kind's folder, summed.
        func total(_ count: (String) throws -> Int) -> Int {
            spool.kinds.reduce(0) { sum, kind in sum + ((try? count(kind)) ?? 0) }
        }
        return HealthReport(
            databaseUp: counters != nil,
            received: counters?.reduce(0) { $0 + $1.received } ?? 0,
            inserted: counters?.reduce(0) { $0 + $1.inserted } ?? 0,
            inbox: total { try spool.pendingInInboxes(of: $0) },
            processing: total { try spool.pendingCount(spool.processingPath($0)) },
            // A failed file has one `.error.json` beside it (and perhaps a `.rejected.*`).
            failed: total { kind in
                try spool.scanAll(spool.failedPath(kind)).filter { $0.hasSuffix(".error.json") }.count
            }
        )
    }
}

/// `GET /health` computed at most once a second: counting a deep inbox must not make the health check
/// the slowest route.
actor HealthCache {
    private var last: (at: ContinuousClock.Instant, report: HealthReport)?

    func report(_ compute: () async -> HealthReport) async -> HealthReport {
        if let last, ContinuousClock.now - last.at < .seconds(1) { return last.report }
        let fresh = await compute()
        last = (ContinuousClock.now, fresh)
        return fresh
    }
}

struct Validate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Dry run for partners: what a file would store and reject, and why. Writes nothing.",
        discussion: "Exit status: 0 when every record would be stored, 1 when any record or the file is rejected."
    )

    @Option(help: "The kind of data: \(Kind.allCases.map(\.rawValue).joined(separator: ", ")).")
    var kind: String

    @Flag(help: "Print the report as JSON (the shape of the .error.json sidecar).")
    var json = false

    @Option(help: "zoom-report: the IANA time zone of the report's local times (default: [zoom_report] timezone).")
    var timezone: String?

    @Option(help: "zoom-report: MM/DD/YYYY or DD/MM/YYYY (default: [zoom_report] date_order, else MM/DD/YYYY).")
    var dateOrder: String?

    @Option(help: "zoom-report: 12h, 24h or either (default: [zoom_report] clock, else either).")
    var clock: String?

    @OptionGroup var configOption: ConfigOption
    @OptionGroup var schemaOption: SchemaOption

    @Argument(help: "The file to check.")
    var file: String

    func run() async throws {
        guard let kind = Kind(rawValue: kind) else {
            throw ValidationError(
                "unknown kind \(self.kind); one of \(Kind.allCases.map(\.rawValue).joined(separator: ", "))"
            )
        }
        guard let data = FileManager.default.contents(atPath: file) else {
            throw ValidationError("cannot read \(file)")
        }
        func times(_ config: ConfigFile) throws -> LocalTimes {
            var times = LocalTimes(config.zoomReportTimes)
            if let timezone {
                guard LocalTimes.isZoneName(timezone) else {
                    throw ValidationError("--timezone: \(timezone) is not an IANA time zone name (America/Chicago)")
                }
                times.zone = timezone
            }
            if let dateOrder {
                guard let order = LocalTimes.DateOrder(rawValue: dateOrder) else {
                    throw ValidationError("--date-order: MM/DD/YYYY or DD/MM/YYYY")
                }
                times.dateOrder = order
            }
            if let clock {
                guard let value = LocalTimes.Clock(rawValue: clock) else {
                    throw ValidationError("--clock: 12h, 24h or either")
                }
                times.clock = value
            }
            return times
        }
        let config = try configOption.load()
        let catalog = try schemaOption.catalog(config: config)
        var bytes = Array(data)
        var refusal: String?
        switch Compression.of(bytes.prefix(6)) {
        case .unsupported(let format): refusal = Compression.unsupportedMessage(format)
        case .gzip:
            // Decompressed whole, within the same limits and at most 256 MiB (the daemon streams any size;
            // this dry run holds the file in memory).
            do throws(DecompressionProblem) {
                if let plain = try GzipStream.decompress(bytes, limits: config.decompressionLimits, upTo: 256 << 20) {
                    bytes = plain
                } else {
                    refusal =
                        "validate reads at most 256 MiB of decompressed data (the daemon streams files of any size "
                        + "within [compression]'s limits): check a part of the file"
                }
            } catch {
                refusal = error.message
            }
        case nil: break
        }
        let report =
            try refusal.map {
                FileReport(
                    outcome: .rejected,
                    errors: [RecordProblem(record: nil, line: nil, pointer: nil, message: $0)]
                )
            } ?? dryRun(bytes: bytes, kind: kind, catalog: catalog, fileName: file, times: try times(config))
        if json {
            print(report.json())
        } else {
            // Human output: control characters escaped (a pointer may hold a member name's NUL or ESC).
            print("\(Terminal.safe(file)): \(report.outcome.rawValue)")
            print("would store \(report.stored), skip \(report.duplicates) duplicates, reject \(report.rejected)")
            // A file-level rejection has its reason as its one problem (no record number): say it is the
            // file's.
            for problem in report.errors {
                print(
                    problem.record == nil && report.outcome == .rejected
                        ? "  file rejected: \(Terminal.safe(problem.text))" : "  \(Terminal.safe(problem.text))"
                )
            }
            for note in report.notes { print("  note: \(Terminal.safe(note))") }
        }
        if report.outcome == .partial || report.outcome == .rejected { throw ExitCode(1) }
    }
}

struct Retry: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Move failed files back into their inbox for another try (never replacing a file there)."
    )

    @OptionGroup var spoolOptions: SpoolOptions

    @Argument(help: "The files' ids (the part of the name before '--').")
    var ids: [String] = []

    @Option(help: "With --all: the kind whose failed files to retry.")
    var kind: String?

    @Flag(help: "Retry every failed file of --kind.")
    var all = false

    @Flag(help: "Print JSON: each file's id and where it went.")
    var json = false

    func validate() throws {
        if all && (kind == nil || !ids.isEmpty) { throw ValidationError("--all needs --kind and no ids") }
        if !all && ids.isEmpty { throw ValidationError("give file ids, or --kind K --all") }
    }

    func run() async throws {
        let spool = try spoolOptions.resolved().spool
        let auditStore = await OperatorStore.forAudit(spoolOptions)
        var targets = ids
        if all, let kind {
            guard spool.kinds.contains(kind) else { throw ValidationError("unknown kind \(kind)") }
            targets = Set(
                SpoolName.files(among: try spool.scanAll(spool.failedPath(kind)).filter { !$0.hasPrefix(".") })
                    .compactMap { SpoolName.parse($0)?.id }
            ).sorted()
        }
        var failures = 0
        var requeued: [JSONValue] = []
        defer { if json { print(JSONValue.object([.init(key: "requeued", value: .array(requeued))]).compactText) } }
        for id in targets {
            if let sidecars = try spool.partialSidecars(id: id) {
                let rejected = sidecars.first { $0.contains(".rejected.") } ?? sidecars[0]
                FileHandle.standardError.write(
                    Data(
                        ("\(Terminal.safe(id)) is partial: its good records are stored and its file is in done/; fix "
                            + "failed/…/\(Terminal.safe(rejected)) and drop that into the inbox it came from\n").utf8
                    )
                )
                if !all { failures += 1 }
                continue
            }
            // A report read with its partner inbox's local times would be read with the spool's own inbox's.
            if let (kind, note) = spool.failedInboxNote(id: id),
                let own = spool.inboxes.first(where: { $0.path == spool.inboxPath(kind) })?.note, note != own
            {
                let was = LocalTimes(note: note)?.summary ?? note
                let now = LocalTimes(note: own)?.summary ?? own
                FileHandle.standardError.write(
                    Data(
                        ("\(Terminal.safe(id)) was read with its inbox's local times (\(was)), and \(spool.inboxPath(kind))/ "
                            + "reads \(now): not requeued — move the fixed file back into the inbox it came from\n")
                            .utf8
                    )
                )
                failures += 1
                continue
            }
            do {
                guard let moved = try spool.requeue(id: id) else {
                    FileHandle.standardError.write(Data("no file with id \(id) in \(spool.root)/failed/\n".utf8))
                    failures += 1
                    continue
                }
                if json {
                    requeued.append(
                        .object([
                            .init(key: "id", value: .string(id)),
                            .init(key: "path", value: .string(spool.inboxPath(moved.kind) + "/" + moved.name)),
                        ])
                    )
                } else {
                    print(
                        "requeued \(Terminal.safe(id)) to \(Terminal.safe(spool.inboxPath(moved.kind) + "/" + moved.name))"
                    )
                }
                auditStore?.recordQuietly(
                    action: "retry",
                    target: id,
                    detail: moved.kind + "/" + moved.name
                )
            } catch {
                FileHandle.standardError.write(Data("cannot requeue \(id): \(error.description)\n".utf8))
                failures += 1
            }
        }
        await auditStore?.close()
        if failures > 0 { throw ExitCode(1) }
    }
}

struct Purge: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove finished files from done/ older than a number of days (the ledger keeps their rows).",
        discussion: "The daemon does this hourly by its retention setting (retention.done_days, default 30)."
    )

    @OptionGroup var spoolOptions: SpoolOptions

    @Option(help: "Remove the done/<kind>/<day>/ folders of days older than this: 30d or 30.")
    var doneOlderThan: String

    @Flag(help: "Only list what would be removed.")
    var dryRun = false

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let text = doneOlderThan.hasSuffix("d") ? String(doneOlderThan.dropLast()) : doneOlderThan
        guard let days = Int(text), days >= 1 else {
            throw ValidationError("--done-older-than must be a number of days, 1 or more: 30d or 30")
        }
        let spool = try spoolOptions.resolved().spool
        let cutoff = Spool.cutoffDay(daysAgo: days)
        do {
            let removed = try spool.purgeDone(before: cutoff, dryRun: dryRun)
            if json {
                print(
                    JSONValue.object([
                        .init(key: "dry_run", value: .bool(dryRun)), .init(key: "before", value: .string(cutoff)),
                        .init(key: "folders", value: .array(removed.folders.map { .string("done/" + $0) })),
                        .init(key: "files", value: .number(String(removed.files))),
                    ]).compactText
                )
            } else {
                for folder in removed.folders { print((dryRun ? "would remove done/" : "removed done/") + folder) }
            }
            if !dryRun && !removed.folders.isEmpty, let auditStore = await OperatorStore.forAudit(spoolOptions) {
                auditStore.recordQuietly(
                    action: "purge",
                    target: "done before \(cutoff)",
                    detail: "\(removed.files) files in \(removed.folders.count) day folders"
                )
                await auditStore.close()
            }
            if !json {
                print(
                    "\(dryRun ? "would remove" : "removed") \(removed.files) files in \(removed.folders.count) day folders before \(cutoff)"
                )
            }
        } catch {
            throw ValidationError("purge stopped: \(error.description)")
        }
    }
}

extension LocalTimes {
    /// The configuration's checked values (`[zoom_report]`, an `[[inbox]]`).
    init(_ config: LocalTimeConfig) {
        self.init(
            zone: config.timezone,
            dateOrder: DateOrder(rawValue: config.dateOrder) ?? .monthFirst,
            clock: Clock(rawValue: config.clock) ?? .either
        )
    }
}
