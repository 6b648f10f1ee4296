import Foundation
import HTTPIngress
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import JSONSchema
import NIOCore
import Spool
import Testing

/// The HTTP routes through HummingbirdTesting, writing into a real temporary spool.
@Suite struct HTTPIngressTests {
    let dir = TempDir("http")

    func app(_ configuration: HTTPConfiguration = .init(), now: Int = 1_720_707_175) throws -> (
        some ApplicationProtocol, Spool
    ) {
        let spool = Spool(root: dir.path + "/spool", kinds: ["appointments", "zoom", "intake"])
        try spool.prepare()
        let router = buildRouter(
            configuration: configuration,
            spool: spool,
            health: {
                HealthReport(databaseUp: true, received: 3, inserted: 2, inbox: 1, processing: 0, failed: 0)
            },
            now: { now }
        )
        return (Application(router: router), spool)
    }

    func inbox(_ spool: Spool, _ kind: String) throws -> [String] { try spool.scanAll(spool.inboxPath(kind)) }

    @Test func aWebhookIsOnDiskInTheInboxBeforeThe202() async throws {
        defer { dir.cleanup() }
        let (app, spool) = try app()
        let body = event("A1", "2025-01-10T12:30:00Z")
        try await app.test(.router) { client in
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "application/json"],
                body: ByteBuffer(string: body)
            ) { response in
                #expect(response.status == .accepted)
                let reply = try JSONParser.parse(Array(String(buffer: response.body).utf8))
                #expect(reply["status"]?.stringValue == "accepted")
                let id = try #require(reply["id"]?.stringValue)
                let names = try inbox(spool, "appointments")
                #expect(names == [id + ".json"])
                let stored = try String(
                    contentsOfFile: spool.inboxPath("appointments") + "/" + id + ".json",
                    encoding: .utf8
                )
                #expect(stored == body)
            }
        }
    }

    @Test func theDoorChecksContentTypeSizeAndJSON() async throws {
        defer { dir.cleanup() }
        let (app, spool) = try app(HTTPConfiguration(webhookBodyLimit: 64))
        try await app.test(.router) { client in
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "text/plain"],
                body: ByteBuffer(string: "{}")
            ) {
                #expect($0.status == .unsupportedMediaType)
            }
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "application/json"],
                body: ByteBuffer(string: "[" + String(repeating: "1,", count: 100) + "1]")
            ) { #expect($0.status == .contentTooLarge) }
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "application/json; charset=utf-8"],
                body: ByteBuffer(string: "{\"a\": tru}")
            ) { response in
                #expect(response.status == .badRequest)
                #expect(String(buffer: response.body).contains("byte 9"))
            }
            try await client.execute(
                uri: "/ingest",
                method: .post,
                headers: [.contentType: "application/json"],
                body: ByteBuffer(string: "{}")
            ) {
                #expect($0.status == .badRequest)
            }
        }
        #expect(try inbox(spool, "appointments").isEmpty && inbox(spool, "intake").isEmpty)
    }

    @Test func bearerTokensAreCheckedPerRoute() async throws {
        defer { dir.cleanup() }
        let token = try #require(HTTPToken(spec: "scheduler:s3cret:appointments"))
        let (app, spool) = try app(HTTPConfiguration(host: "0.0.0.0", tokens: [token]))
        try await app.test(.router) { client in
            let body = ByteBuffer(string: event("A1", "2025-01-10T12:30:00Z"))
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "application/json"],
                body: body
            ) {
                #expect($0.status == .unauthorized)
            }
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "application/json", .authorization: "Bearer wrong"],
                body: body
            ) { #expect($0.status == .unauthorized) }
            try await client.execute(
                uri: "/ingest",
                method: .post,
                headers: [.contentType: "application/json", .authorization: "Bearer s3cret"],
                body: ByteBuffer(string: "[]")
            ) { #expect($0.status == .forbidden) }
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "application/json", .authorization: "Bearer s3cret"],
                body: body
            ) { #expect($0.status == .accepted) }
        }
        #expect(try inbox(spool, "appointments").count == 1)
        #expect(HTTPConfiguration(host: "0.0.0.0").refusal != nil)
        #expect(HTTPConfiguration(host: "127.0.0.1").refusal == nil)
    }

    @Test func zoomSignatureVectorsThroughTheRealRoute() async throws {
        defer { dir.cleanup() }
        let vectors = try JSONParser.parse(
            [UInt8](Data(contentsOf: TestPaths.testdata.appendingPathComponent("zoom/signature-vectors.json")))
        )
        guard case .array(let list) = vectors["signature_vectors"] else {
            Issue.record("no vectors")
            return
        }
        var checked = 0
        for vector in list {
            // Only vectors whose body is JSON and whose timestamp is a number can reach the signature check.
            guard let timestamp = vector["x-zm-request-timestamp"]?.stringValue, let seconds = Int(timestamp),
                seconds < 10_000_000_000, let body = vector["body"]?.stringValue,
                let secret = vector["secret"]?.stringValue, let signature = vector["x-zm-signature"]?.stringValue
            else { continue }
            let (app, _) = try app(HTTPConfiguration(zoomSecrets: ["rotated-out", secret]), now: seconds + 10)
            let valid = vector["expect_valid"] == .bool(true)
            try await app.test(.router) { client in
                try await client.execute(
                    uri: "/zoom_events/events",
                    method: .post,
                    headers: [
                        .contentType: "application/json", HTTPField.Name("x-zm-signature")!: signature,
                        HTTPField.Name("x-zm-request-timestamp")!: timestamp,
                    ],
                    body: ByteBuffer(bytes: Array(body.utf8))
                ) { response in
                    if valid {
                        #expect(
                            response.status == .accepted || response.status == .ok,
                            "\(vector["id"]?.stringValue ?? "")"
                        )
                    } else {
                        #expect(response.status == .unauthorized, "\(vector["id"]?.stringValue ?? "")")
                    }
                }
            }
            checked += 1
        }
        #expect(checked >= 9)
    }

    @Test func urlValidationIsAnsweredAtOnceAndNeverSpooledAndOldTimestampsAreReplays() async throws {
        defer { dir.cleanup() }
        let secret = "4fv1RkqGQUq5sWbEz6hA5A"
        let body =
            "{\"payload\":{\"plainToken\":\"xys8n8PGS7mAU0m5-YJjRA\"},\"event_ts\":1720705455858,\"event\":\"endpoint.url_validation\"}"
        let signature = "v0=93a1a675965ceb9c5a50c5dfb31f20e50f763be37a54ef74cd2d16a1a8e5c0d6"
        let headers: HTTPFields = [
            .contentType: "application/json", HTTPField.Name("x-zm-signature")!: signature,
            HTTPField.Name("x-zm-request-timestamp")!: "1720705455",
        ]
        let (fresh, spool) = try app(HTTPConfiguration(zoomSecrets: [secret]), now: 1_720_705_460)
        try await fresh.test(.router) { client in
            try await client.execute(
                uri: "/zoom_events/events",
                method: .post,
                headers: headers,
                body: ByteBuffer(string: body)
            ) { response in
                #expect(response.status == .ok)
                let answer = try JSONParser.parse(Array(String(buffer: response.body).utf8))
                #expect(
                    answer["encryptedToken"]?.stringValue
                        == "2fffc6a967dde4f68024025a5bd991c5ae1e5313b4e6365be4883e3e81d479b3"
                )
            }
        }
        #expect(try inbox(spool, "zoom").isEmpty)
        let (late, _) = try app(HTTPConfiguration(zoomSecrets: [secret]), now: 1_720_705_455 + 301)
        try await late.test(.router) { client in
            try await client.execute(
                uri: "/zoom_events/events",
                method: .post,
                headers: headers,
                body: ByteBuffer(string: body)
            ) {
                #expect($0.status == .unauthorized)
            }
        }
    }

    @Test func healthReportsTheDatabaseCountersAndQueues() async throws {
        defer { dir.cleanup() }
        let (app, _) = try app()
        try await app.test(.router) { client in
            try await client.execute(uri: "/health", method: .get) { response in
                #expect(response.status == .ok)
                #expect(
                    String(buffer: response.body)
                        == "{\"status\":\"ok\",\"db\":\"up\",\"received\":3,\"inserted\":2,\"queues\":{\"inbox\":1,\"processing\":0,\"failed\":0}}"
                )
            }
        }
    }

    @Test func aSenderOverItsRateGets429WithRetryAfterAndOthersDoNot() async throws {
        defer { dir.cleanup() }
        let a = try #require(HTTPToken(spec: "a:secret-a:*"))
        let b = try #require(HTTPToken(spec: "b:secret-b:*"))
        let (app, spool) = try app(HTTPConfiguration(tokens: [a, b], ratePerSecond: 2))
        try await app.test(.router) { client in
            var statuses: [HTTPResponse.Status] = []
            var retryAfter: String?
            for n in 0..<3 {
                try await client.execute(
                    uri: "/webhook/appointments",
                    method: .post,
                    headers: [.contentType: "application/json", .authorization: "Bearer secret-a"],
                    body: ByteBuffer(string: event("R\(n)", "2025-01-10T12:30:00Z"))
                ) { response in
                    statuses.append(response.status)
                    if response.status == .tooManyRequests { retryAfter = response.headers[.retryAfter] }
                }
            }
            #expect(statuses == [.accepted, .accepted, .tooManyRequests])
            #expect(retryAfter == "1")
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "application/json", .authorization: "Bearer secret-b"],
                body: ByteBuffer(string: event("R9", "2025-01-10T12:30:00Z"))
            ) { #expect($0.status == .accepted) }
        }
        #expect(try inbox(spool, "appointments").count == 3)
    }

    @Test func aTokenBucketRefillsAtItsRate() {
        let limiter = RateLimiter(rate: 10, burst: 10)
        let start = ContinuousClock.now
        for _ in 0..<10 { #expect(limiter.take("k", now: start) == nil) }
        #expect(limiter.take("k", now: start) == 1)
        #expect(limiter.take("k", now: start + .milliseconds(150)) == nil)
        #expect(limiter.take("other", now: start) == nil)
    }

    @Test func aFullInboxOrANearlyFullDiskIsBackpressure503WithRetryAfter() async throws {
        defer { dir.cleanup() }
        let body = ByteBuffer(string: event("P1", "2025-01-10T12:30:00Z"))
        let headers: HTTPFields = [.contentType: "application/json"]
        let (app, spool) = try app(HTTPConfiguration(inboxHighWater: 1))
        try await app.test(.router) { client in
            try await client.execute(uri: "/webhook/appointments", method: .post, headers: headers, body: body) {
                #expect($0.status == .accepted)
            }
            try await Task.sleep(for: .milliseconds(600))  // the inbox count is refreshed every 500 ms
            try await client.execute(uri: "/webhook/appointments", method: .post, headers: headers, body: body) {
                response in
                #expect(response.status == .serviceUnavailable)
                #expect(response.headers[.retryAfter] == "5")
            }
        }
        #expect(try inbox(spool, "appointments").count == 1)
        let (full, _) = try self.app(HTTPConfiguration(diskReserve: Int64.max))
        try await full.test(.router) { client in
            try await client.execute(uri: "/ingest", method: .post, headers: headers, body: ByteBuffer(string: "[]")) {
                #expect($0.status == .serviceUnavailable)
            }
        }
    }
}
