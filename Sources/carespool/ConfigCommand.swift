import ArgumentParser
import Config
import Foundation
import HTTPIngress
import Logging
import Pipeline
import Spool

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Check the configuration file.",
        subcommands: [Check.self]
    )

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate a configuration file and print the settings in effect, secrets masked.",
            discussion: """
                Without FILE: $CARESPOOL_CONFIG, else \(ConfigOption.defaultPath). Exit status 0 when the file is \
                valid, 78 (EX_CONFIG) with the file, line and key of the first problem otherwise.
                """
        )

        @Argument(help: "The file to check.")
        var file: String?

        func run() async throws {
            guard let path = ConfigOption.path(file) else {
                print("# no configuration file (\(ConfigOption.defaultPath) does not exist): built-in defaults")
                try print(Self.render(Settings(serve: nil, config: ConfigFile()), ConfigFile()))
                return
            }
            let config = try ConfigOption.load(path)
            let settings: Settings
            do {
                settings = try Settings(serve: nil, config: config)
            } catch let error as ConfigError {
                throw ConfigOption.fail(error)
            }
            print("# \(path): valid; the settings in effect (secrets masked)")
            print(Self.render(settings, config))
        }

        /// The settings as TOML, in the file's layout.
        static func render(_ settings: Settings, _ config: ConfigFile) -> String {
            func quoted(_ text: String) -> String {
                "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
                    + "\""
            }
            func millis(_ duration: Duration) -> Int {
                Int(duration.components.seconds * 1_000 + duration.components.attoseconds / 1_000_000_000_000_000)
            }
            let masked = "\"********\""
            let spool = config.spool ?? "spool"
            var lines = [
                "spool = \(quoted(spool))",
                // With a password file, the store is the [database] table below.
                config.databasePasswordFile == nil
                    ? "database = \(quoted(config.database ?? spool + "/carespool.sqlite3"))"
                    : "# database: [database]",
                "schema = \(quoted(config.schema ?? SchemaOption.defaultPath ?? "schema.json"))",
                "log_level = \(quoted(settings.logLevel.rawValue))",
                "settle_ms = \(millis(settings.pipeline.settle))",
                "open_hold_ms = \(millis(settings.pipeline.openHold))",
                "close_grace_ms = \(millis(settings.pipeline.closeGrace))",
                "rescan_ms = \(millis(settings.pipeline.rescanInterval))",
                "batch_size = \(settings.pipeline.batchSize)",
                "stream_threshold = \(settings.pipeline.streamThreshold)",
                "memory_budget = \(settings.pipeline.memoryBudget >> 20)",
                "busy_timeout_ms = \(settings.busyTimeoutMs)",
                "chunk_commit_ms = \(settings.chunkCommitMs)",
            ]
            if let passwordFile = config.databasePasswordFile {
                lines += [
                    "", "[database]", "url = \(quoted(config.database ?? ""))",
                    "password_file = \(quoted(passwordFile))",
                ]
            }
            lines += [
                "",
                "[compression]",
                "max_decompressed_mib = \(config.decompressionLimits.maxBytes >> 20)",
                "max_ratio = \(config.decompressionLimits.maxRatio)",
                "",
                "[retention]",
                "done_days = \(settings.retentionDays)",
                "",
                "[zoom_report]",
            ]
            func times(_ times: LocalTimeConfig) -> [String] {
                (times.timezone.map { ["timezone = \(quoted($0))"] } ?? ["# timezone: none (CSV reports are rejected)"])
                    + ["date_order = \(quoted(times.dateOrder))", "clock = \(quoted(times.clock))"]
            }
            lines += times(config.zoomReportTimes)
            for inbox in config.inboxes {
                lines += [
                    "", "[[inbox]]", "path = \(quoted(inbox.path))", "kind = \(quoted(inbox.kind))",
                    "arrival = \(quoted(inbox.arrival))",
                ]
                if let own = config.inboxTimes[inbox.path] { lines += times(own) }
            }
            if let notify = config.notify {
                lines += ["", "[notify]"]
                if let command = notify.command { lines.append("command = \(quoted(command))") }
                if let url = notify.url {
                    lines.append("url = \(quoted(url))")
                    lines.append(notify.secretFile.map { "secret_file = \(quoted($0))" } ?? "secret = \(masked)")
                }
                lines += [
                    "outcomes = [" + notify.outcomes.map(quoted).joined(separator: ", ") + "]",
                    "include_name = \(notify.includeName)", "timeout_s = \(notify.timeoutSeconds)",
                    "retry_initial_ms = \(notify.retryInitialMs)", "retry_max_s = \(notify.retryMaxSeconds)",
                ]
            }
            lines += ["", "[http]"]
            guard let http = settings.http else {
                lines.append("listen = \"off\"")
                return lines.joined(separator: "\n")
            }
            let host = http.host.contains(":") ? "[\(http.host)]" : http.host
            // Each route's protection, as a comment: what a sender needs to be heard.
            lines += [
                "# route protection: "
                    + [
                        ("appointments", "POST /webhook/appointments"), ("zoom", "POST /zoom_events/events"),
                        ("intake", "POST /ingest"),
                    ].map { kind, route in
                        let how: String
                        switch http.protection(of: kind) {
                        case .zoomSignature: how = "Zoom signature (x-zm-signature)"
                        case .webhookSignature: how = "Standard Webhooks signature"
                        case .bearer(let names):
                            how =
                                names.isEmpty
                                ? "closed (no token names it)" : "bearer token " + names.joined(separator: ", ")
                        case .open: how = "OPEN without credentials (loopback only)"
                        case .closed: how = "closed (401: no credential configured)"
                        }
                        return route + " " + how
                    }.joined(separator: "; ")
            ]
            lines += [
                "listen = \(quoted("\(host):\(http.port)"))",
                "open_routes = [" + http.openRoutes.sorted().map(quoted).joined(separator: ", ") + "]",
                "zoom_secrets = [" + http.zoomSecrets.map { _ in masked }.joined(separator: ", ") + "]",
                "rate_per_second = \(http.ratePerSecond ?? 0)",
                "inbox_high_water = \(http.inboxHighWater)",
                "disk_reserve_mib = \(http.diskReserve >> 20)",
                "header_timeout_s = \(http.headerTimeout.components.seconds)",
                "body_timeout_s = \(http.bodyTimeout.components.seconds)",
                "max_connections = \(http.maxConnections)",
                "webhook_body_limit = \(http.webhookBodyLimit)",
                "ingest_body_limit = \(http.ingestBodyLimit)",
            ]
            if !http.webhookSecrets.isEmpty {
                lines += ["", "[http.webhook_secrets]"]
                for (route, secrets) in http.webhookSecrets.sorted(by: { $0.key < $1.key }) {
                    lines.append("\(route) = [" + secrets.map { _ in masked }.joined(separator: ", ") + "]")
                }
            }
            for token in http.tokens {
                let hex = token.sha256.prefix(4).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
                lines += [
                    "", "[[http.token]]", "name = \(quoted(token.name))", "sha256 = \(quoted(hex + "…"))",
                    "routes = [" + token.routes.sorted().map(quoted).joined(separator: ", ") + "]",
                ]
            }
            return lines.joined(separator: "\n")
        }
    }
}
