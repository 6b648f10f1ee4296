import Foundation
import JSONSchema
import Testing
import WebhookSignatures

/// ../shared/testdata/zoom/signature-vectors.json, every vector.
@Suite struct ZoomSignatureTests {
    static let folder = TestPaths.testdata.appendingPathComponent("zoom")

    static func document() throws -> JSONValue {
        try JSONParser.parse([UInt8](Data(contentsOf: folder.appendingPathComponent("signature-vectors.json"))))
    }

    @Test func everySignatureVectorVerifiesExactlyWhenItShould() throws {
        guard case .array(let vectors) = try Self.document()["signature_vectors"] else {
            Issue.record("no signature_vectors")
            return
        }
        #expect(vectors.count == 14)
        for vector in vectors {
            let id = vector["id"]?.stringValue ?? "?"
            let body = try #require(vector["body"]?.stringValue)
            var bytes = Array(body.utf8)
            if let file = vector["body_file"]?.stringValue {
                // The raw body as delivered: the HMAC is over these bytes, escapes and all.
                bytes = [UInt8](try Data(contentsOf: Self.folder.appendingPathComponent(file)))
                #expect(bytes == Array(body.utf8), "\(id): body_file differs from body")
            }
            let valid = ZoomSignature.isValid(
                signature: try #require(vector["x-zm-signature"]?.stringValue),
                timestamp: try #require(vector["x-zm-request-timestamp"]?.stringValue),
                body: bytes,
                secret: try #require(vector["secret"]?.stringValue)
            )
            #expect(valid == (vector["expect_valid"] == .bool(true)), "\(id)")
        }
    }

    @Test func theURLValidationAnswerMatchesTheVectorWithAKnownSecret() throws {
        guard case .array(let vectors) = try Self.document()["url_validation_vectors"] else {
            Issue.record("no url_validation_vectors")
            return
        }
        var checked = 0
        for vector in vectors {
            // Zoom's docs example publishes no secret: nothing to compute it from.
            guard let secret = vector["secret"]?.stringValue else { continue }
            let plain = try #require(vector["plainToken"]?.stringValue)
            let answer = ZoomSignature.urlValidationAnswer(plainToken: plain, secret: secret)
            #expect(answer.plainToken == plain)
            #expect(answer.encryptedToken == vector["encryptedToken"]?.stringValue)
            checked += 1
        }
        #expect(checked == 1)
    }

    @Test func malformedSignaturesFromZoomsDocsNeverVerify() throws {
        guard case .array(let examples) = try Self.document()["malformed_examples_from_docs"] else {
            Issue.record("no malformed_examples_from_docs")
            return
        }
        for example in examples {
            let value = try #require(example["value"]?.stringValue)
            #expect(!ZoomSignature.isValid(signature: value, timestamp: "1", body: [], secret: "s"))
        }
    }
}
