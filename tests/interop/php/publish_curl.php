<?php
/*
 * How CATS's add.php publishes to catsock: one HTTP POST with plain curl, no
 * WebSocket inside a PHP request (docs/integrations.md shows the same code).
 *
 * Usage: php publish_curl.php BASE_URL TOKEN TYPE PAYLOAD_JSON [envelope|short]
 *
 *   envelope  (default) the seed 000 §4.2 envelope, as SocketEventDispatcher builds it
 *   short     {"type", "payload"} only; the gateway fills version, timestamp,
 *             message_id and sender
 *
 * Prints one JSON line {"status": <HTTP status>, "retry_after": ..., "body": <decoded body>}
 * and exits 0 on 202 Accepted, 1 on any other answer, 2 when the gateway cannot be reached.
 */

declare(strict_types=1);

/** A random UUID v4, as the seed's dispatcher writes message ids. */
function uuid_v4(): string
{
    $bytes = random_bytes(16);
    $bytes[6] = chr((ord($bytes[6]) & 0x0f) | 0x40);
    $bytes[8] = chr((ord($bytes[8]) & 0x3f) | 0x80);
    return vsprintf('%s%s-%s-%s-%s-%s%s%s', str_split(bin2hex($bytes), 4));
}

/**
 * POST one event to catsock's /api/publish.
 *
 * @return array{0: int, 1: mixed, 2: ?string} HTTP status, decoded JSON body, Retry-After
 * @throws RuntimeException when the gateway cannot be reached
 */
function catsock_publish(
    string $baseUrl,
    string $token,
    string $type,
    array $payload,
    bool $envelope = true,
    int $timeoutSeconds = 3
): array {
    $body = $envelope
        ? [
            'version' => '1.0',
            'type' => $type,
            'timestamp' => gmdate('Y-m-d\TH:i:s\Z'),
            'message_id' => uuid_v4(),
            'sender' => 'CATS',
            'payload' => $payload,
        ]
        : ['type' => $type, 'payload' => $payload];

    $retryAfter = null;
    $ch = curl_init(rtrim($baseUrl, '/') . '/api/publish');
    curl_setopt_array($ch, [
        CURLOPT_POST => true,
        CURLOPT_POSTFIELDS => json_encode($body, JSON_THROW_ON_ERROR),
        CURLOPT_HTTPHEADER => [
            'Content-Type: application/json',
            'Authorization: Bearer ' . $token,
        ],
        CURLOPT_RETURNTRANSFER => true,
        CURLOPT_CONNECTTIMEOUT => $timeoutSeconds,
        CURLOPT_TIMEOUT => $timeoutSeconds,
        CURLOPT_HEADERFUNCTION => function ($ch, string $line) use (&$retryAfter): int {
            if (stripos($line, 'Retry-After:') === 0) {
                $retryAfter = trim(substr($line, strlen('Retry-After:')));
            }
            return strlen($line);
        },
    ]);
    $response = curl_exec($ch);
    if ($response === false) {
        $error = curl_error($ch);
        curl_close($ch);
        throw new RuntimeException('catsock unreachable: ' . $error);
    }
    $status = (int) curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
    curl_close($ch);
    return [$status, json_decode((string) $response, true), $retryAfter];
}

if (PHP_SAPI === 'cli' && realpath($argv[0]) === __FILE__) {
    if ($argc < 5) {
        fwrite(STDERR, "usage: php publish_curl.php BASE_URL TOKEN TYPE PAYLOAD_JSON [envelope|short]\n");
        exit(2);
    }
    [, $baseUrl, $token, $type, $payloadJson] = $argv;
    $mode = $argv[5] ?? 'envelope';
    $payload = json_decode($payloadJson, true, 512, JSON_THROW_ON_ERROR);
    try {
        [$status, $decoded, $retryAfter] = catsock_publish(
            $baseUrl, $token, $type, $payload, $mode !== 'short'
        );
    } catch (RuntimeException $e) {
        fwrite(STDERR, $e->getMessage() . "\n");
        exit(2);
    }
    echo json_encode(
        ['status' => $status, 'retry_after' => $retryAfter, 'body' => $decoded],
        JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES
    ), "\n";
    exit($status === 202 ? 0 : 1);
}
