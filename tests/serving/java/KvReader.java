// Reader for coarserank KV files (docs/kv-format.md): JDK 17+, no dependencies.
//
//   javac KvReader.java && java KvReader items.kv [id ...]
//
// Prints the header, then one line per requested id (all ids when none are given):
//   "<id> <hex float32 bits> ..."  or  "<id> missing".
// Exits 2 with "error: ..." on stderr for a file that is not a valid KV file.

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Arrays;
import java.util.zip.CRC32;

public final class KvReader {
    static final int HEADER_SIZE = 128;
    static final int MAX_FORMAT_VERSION = 2;

    final int dim;
    final int count;
    final String dtype;
    final String modelHash;
    final String runId;  // "" in a version-1 file
    final long[] ids;
    private final ByteBuffer vectors;

    KvReader(Path path) throws IOException {
        MappedByteBuffer buf;
        try (FileChannel channel = FileChannel.open(path, StandardOpenOption.READ)) {
            long size = channel.size();
            if (size < HEADER_SIZE) throw fail(path, "truncated: " + size + " bytes");
            buf = channel.map(FileChannel.MapMode.READ_ONLY, 0, size);  // files up to 2 GiB
        }
        buf.order(ByteOrder.LITTLE_ENDIAN);
        byte[] magic = new byte[4];
        buf.get(0, magic);
        if (!Arrays.equals(magic, "CRKV".getBytes(StandardCharsets.US_ASCII))) throw fail(path, "wrong magic");
        int version = Short.toUnsignedInt(buf.getShort(4));
        if (version < 1 || version > MAX_FORMAT_VERSION) throw fail(path, "unsupported format version " + version);
        if (crc(buf, 0, 124) != Integer.toUnsignedLong(buf.getInt(124))) throw fail(path, "header checksum mismatch");
        if (version >= 2) {  // the run-id block: length, 56 bytes of UTF-8, CRC32 of bytes [128, 188)
            if (buf.capacity() < 192) throw fail(path, "truncated: a version-2 header has 192 bytes");
            if (crc(buf, 128, 188) != Integer.toUnsignedLong(buf.getInt(188))) {
                throw fail(path, "run-id block checksum mismatch");
            }
            byte[] run = new byte[Math.min(buf.getInt(128), 56)];
            buf.get(132, run);
            runId = new String(run, StandardCharsets.UTF_8);
        } else {
            runId = "";
        }
        int dtypeCode = Short.toUnsignedInt(buf.getShort(6));
        if (dtypeCode != 1 && dtypeCode != 2) throw fail(path, "unknown dtype code " + dtypeCode);
        dtype = dtypeCode == 1 ? "float32" : "float16";
        count = Math.toIntExact(buf.getLong(8));
        dim = buf.getInt(16);
        int idsOffset = Math.toIntExact(buf.getLong(24));
        int vectorsOffset = Math.toIntExact(buf.getLong(32));
        long fileSize = buf.getLong(40);
        if (fileSize != buf.capacity()) throw fail(path, "truncated or padded: header says " + fileSize + " bytes");
        if (crc(buf, idsOffset, buf.capacity()) != Integer.toUnsignedLong(buf.getInt(48))) {
            throw fail(path, "data checksum mismatch");
        }
        byte[] hash = new byte[buf.getInt(52)];
        buf.get(56, hash);
        modelHash = new String(hash, StandardCharsets.UTF_8);
        ids = new long[count];
        buf.slice(idsOffset, 8 * count).order(ByteOrder.LITTLE_ENDIAN).asLongBuffer().get(ids);
        vectors = buf.slice(vectorsOffset, buf.capacity() - vectorsOffset).order(ByteOrder.LITTLE_ENDIAN);
    }

    private static IOException fail(Path path, String problem) {
        return new IOException("KV file " + path + ": " + problem);
    }

    private static long crc(ByteBuffer buf, int from, int to) {
        CRC32 crc = new CRC32();
        crc.update(buf.duplicate().position(from).limit(to));
        return crc.getValue();
    }

    /** The vector of {@code id}, or null when the id is not stored. */
    float[] get(long id) {
        int row = Arrays.binarySearch(ids, id);
        if (row < 0) return null;
        float[] out = new float[dim];
        for (int j = 0; j < dim; j++) {
            int i = row * dim + j;
            out[j] = dtype.equals("float32") ? vectors.getFloat(4 * i) : halfToFloat(vectors.getShort(2 * i));
        }
        return out;
    }

    static float halfToFloat(short half) {
        int h = Short.toUnsignedInt(half);
        int sign = (h & 0x8000) << 16;
        int exponent = (h >>> 10) & 0x1f;
        int fraction = h & 0x3ff;
        if (exponent == 0) {  // zero and subnormals: fraction * 2^-24, exact in float32
            float magnitude = fraction * 0x1p-24f;
            return sign != 0 ? -magnitude : magnitude;
        }
        if (exponent == 31) return Float.intBitsToFloat(sign | 0x7f800000 | (fraction << 13));
        return Float.intBitsToFloat(sign | ((exponent + 112) << 23) | (fraction << 13));
    }

    public static void main(String[] args) {
        if (args.length < 1) {
            System.err.println("usage: java KvReader <items.kv> [id ...]");
            System.exit(64);
        }
        KvReader kv;
        try {
            kv = new KvReader(Path.of(args[0]));
        } catch (IOException | RuntimeException e) {
            System.err.println("error: " + e.getMessage());
            System.exit(2);
            return;
        }
        StringBuilder out = new StringBuilder();
        out.append("dim=").append(kv.dim).append(" count=").append(kv.count).append(" dtype=").append(kv.dtype)
            .append(" model_hash=").append(kv.modelHash).append(" run_id=").append(kv.runId).append('\n');
        long[] wanted = args.length > 1
            ? Arrays.stream(args, 1, args.length).mapToLong(Long::parseLong).toArray() : kv.ids;
        for (long id : wanted) {
            out.append(id);
            float[] v = kv.get(id);
            if (v == null) {
                out.append(" missing");
            } else {
                for (float x : v) out.append(' ').append(String.format("%08x", Float.floatToRawIntBits(x)));
            }
            out.append('\n');
        }
        System.out.print(out);
    }
}
