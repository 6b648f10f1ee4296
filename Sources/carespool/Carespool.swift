// carespool: the executable. Parses commands, builds the configuration once, bootstraps logging (the
// only place that does), and runs the service group. Everything else lives in the library targets.

import ArgumentParser
import Foundation
import HTTPIngress
import Hummingbird
import HummingbirdCore
import Kinds
import Logging
import Metrics
import Pipeline
import Prometheus
import ServiceLifecycle
import Spool
import Store
import UnixSignals

@main
struct Carespool: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "carespool",
        abstract: "File-drop and spool daemon for healthcare integration data.",
        subcommands: [Serve.self, Status.self, Validate.self, Retry.self, Query.self]
    )
}

/// Options every command that touches a spool shares.
struct SpoolOptions: ParsableArguments {
    @Option(help: "The spool folder.")
    var spool: String = "spool"

    @Option(help: "The SQLite database (default: <spool>/carespool.sqlite3).")
    var db: String?

    var databasePath: String { db ?? (spool + "/carespool.sqlite3") }
}

struct SchemaOption: ParsableArguments {
    @Option(help: "The JSON Schema file with one $defs entry per record kind.")
    var schema: String = "schema.json"

    func catalog() throws -> Catalog {
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
        abstract: "Run the daemon in the foreground: watch the inboxes, store, move files to done/ or failed/."
    )

    @OptionGroup var spoolOptions: SpoolOptions
    @OptionGroup var schemaOption: SchemaOption

    @Option(help: "Milliseconds a file found by rescan must hold still (size and mtime) before it is claimed.")
    var settleMs: Int = 2_000

    @Option(help: "Milliseconds between full rescans of every inbox.")
    var rescanMs: Int = 5_000

    @Option(help: "Most files committed in one transaction.")
    var batchSize: Int = 512

    @Option(help: "Bytes above which an NDJSON file is streamed in bounded chunks instead of read whole.")
    var streamThreshold: Int = 8 << 20

    @Option(help: "Milliseconds a database write waits for another connection's lock before it is retried later.")
    var busyTimeoutMs: Int = 10_000

    @Option(help: "HTTP listen address HOST:PORT, or off.")
    var http: String = "127.0.0.1:8080"

    @Option(help: "A bearer token NAME:SECRET:ROUTES (routes: appointments, zoom, intake, or *); repeatable.")
    var httpToken: [String] = []

    @Option(help: "Zoom webhook secret token (give two during a rotation); repeatable.")
    var zoomSecret: [String] = []

    @Option(help: "HTTP requests a second per sender (token bucket, same burst; 429 with Retry-After); 0 for none.")
    var httpRate: Double = 0

    @Option(help: "HTTP answers 503 while an inbox holds this many files (backpressure).")
    var inboxHighWater: Int = 20_000

    @Option(help: "HTTP answers 503 while the spool's filesystem has fewer MiB free than this.")
    var diskReserveMib: Int = 256

    @Option(
        help:
            "A Standard Webhooks secret ROUTE:SECRET (whsec_…; routes: appointments, zoom, intake); repeatable, two for a rotation."
    )
    var webhookSecret: [String] = []

    @Option(help: "Seconds a connection may take to send a request head (and stay idle between requests).")
    var httpHeaderTimeout: Int = 10

    @Option(help: "Seconds a request body may take to arrive (408 after that).")
    var httpBodyTimeout: Int = 60

    @Option(help: "Most HTTP connections open at once; more wait in the listen backlog.")
    var httpMaxConnections: Int = 1_024

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(help: .hidden)
    var testEnospcWhile: String?

    func run() async throws {
        // Test-only: the file layer fails writes with ENOSPC while this file exists (see Spool.TemporaryFile).
        if let testEnospcWhile { setenv("CARESPOOL_TEST_ENOSPC_WHILE", testEnospcWhile, 1) }
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
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
        MetricsSystem.bootstrap(factory)
        let catalog = try schemaOption.catalog()
        let spool = Spool(root: spoolOptions.spool, kinds: Kind.allCases.map(\.rawValue))
        try spool.prepare()
        let database = try AppDatabase.open(
            path: spoolOptions.databasePath,
            busyTimeout: .milliseconds(busyTimeoutMs)
        )
        let processor = Processor(
            spool: spool,
            database: database,
            catalog: catalog,
            configuration: PipelineConfiguration(
                settle: .milliseconds(settleMs),
                rescanInterval: .milliseconds(rescanMs),
                batchSize: max(1, batchSize),
                streamThreshold: max(0, streamThreshold)
            ),
            logger: logger
        )
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: processor)]
        if http != "off" {
            services.append(
                .init(
                    service: try httpApplication(spool: spool, database: database, registry: registry, logger: logger)
                )
            )
        }
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
    /// The HTTP endpoint as a service of the group; refuses no-auth on a non-loopback address.
    func httpApplication(
        spool: Spool,
        database: AppDatabase,
        registry: PrometheusCollectorRegistry,
        logger: Logger
    ) throws -> some Service {
        guard let colon = http.lastIndex(of: ":"), let port = Int(http[http.index(after: colon)...]) else {
            throw ValidationError("--http must be HOST:PORT or off, not \(http)")
        }
        let host = String(http[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        var tokens: [HTTPToken] = []
        for spec in httpToken {
            guard let token = HTTPToken(spec: spec) else {
                throw ValidationError("--http-token must be NAME:SECRET:ROUTES (routes: appointments, zoom, intake, *)")
            }
            tokens.append(token)
        }
        var webhookSecrets: [String: [String]] = [:]
        for spec in webhookSecret {
            let parts = spec.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, spool.kinds.contains(String(parts[0])) else {
                throw ValidationError("--webhook-secret must be ROUTE:SECRET (routes: appointments, zoom, intake)")
            }
            webhookSecrets[String(parts[0]), default: []].append(String(parts[1]))
        }
        let configuration = HTTPConfiguration(
            host: host,
            port: port,
            tokens: tokens,
            zoomSecrets: zoomSecret,
            webhookSecrets: webhookSecrets,
            ratePerSecond: httpRate > 0 ? httpRate : nil,
            inboxHighWater: inboxHighWater,
            diskReserve: Int64(max(0, diskReserveMib)) << 20,
            headerTimeout: .seconds(max(1, httpHeaderTimeout)),
            bodyTimeout: .seconds(max(1, httpBodyTimeout)),
            maxConnections: max(1, httpMaxConnections)
        )
        if let refusal = configuration.refusal { throw ValidationError(refusal) }
        let cache = HealthCache()
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
                return registry.emitToString()
            },
            verdict: { name, kind in
                guard let report = try? database.verdict(name: name, kind: kind) else { return nil }
                return SpoolVerdict(
                    outcome: report.outcome.rawValue,
                    stored: report.stored,
                    duplicates: report.duplicates,
                    rejected: report.rejected,
                    errors: report.errors.map { ($0.record, $0.line, $0.pointer, $0.message) }
                )
            }
        )
        return Application(
            router: router,
            server: .http1(configuration: .init(idleTimeout: .seconds(Int64(max(1, httpHeaderTimeout))))),
            configuration: .init(
                address: .hostname(host, port: port),
                serverName: "carespool",
                backlog: 1_024,
                availableConnectionsDelegate: MaximumAvailableConnections(configuration.maxConnections, logger: logger)
            ),
            logger: logger
        )
    }

    /// Database reachable, Zoom events received and inserted, and queue depths.
    static func health(spool: Spool, database: AppDatabase) async -> HealthReport {
        let counters = try? database.zoomCounters()
        func count(_ folder: (String) -> String, sidecarsOnly: Bool = false) -> Int {
            spool.kinds.reduce(0) { total, kind in
                let names = (try? spool.scanAll(folder(kind))) ?? []
                return total + (sidecarsOnly ? names.filter { $0.hasSuffix(".error.json") }.count : names.count)
            }
        }
        return HealthReport(
            databaseUp: counters != nil,
            received: counters?.reduce(0) { $0 + $1.received } ?? 0,
            inserted: counters?.reduce(0) { $0 + $1.inserted } ?? 0,
            inbox: count(spool.inboxPath),
            processing: count(spool.processingPath),
            failed: count(spool.failedPath, sidecarsOnly: true)
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
        let catalog = try schemaOption.catalog()
        let report = try dryRun(bytes: Array(data), kind: kind, catalog: catalog)
        if json {
            print(report.json())
        } else {
            print("\(file): \(report.outcome.rawValue)")
            print("would store \(report.stored), skip \(report.duplicates) duplicates, reject \(report.rejected)")
            for problem in report.errors { print("  \(problem.text)") }
        }
        if report.outcome == .partial || report.outcome == .rejected { throw ExitCode(1) }
    }
}

struct Retry: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Move a failed file back into its inbox for another try (never replacing a file there)."
    )

    @OptionGroup var spoolOptions: SpoolOptions

    @Argument(help: "The file's id (the part of its name before '--').")
    var id: String

    func run() async throws {
        let spool = Spool(root: spoolOptions.spool, kinds: Kind.allCases.map(\.rawValue))
        do {
            guard let moved = try spool.requeue(id: id) else {
                throw ValidationError("no file with id \(id) in \(spool.root)/failed/")
            }
            print("requeued \(id) to \(spool.inboxPath(moved.kind))/\(moved.name)")
        } catch let error as SpoolError {
            throw ValidationError("cannot requeue \(id): \(error.description)")
        }
    }
}
