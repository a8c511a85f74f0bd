# Runs protoc with protoc-gen-qrpc on each .proto the generator must refuse
# and checks that it fails with a message naming what is wrong.
#
#   cmake -DPROTOC=... -DPLUGIN=... -DPROTO_DIR=... -DQRPC_PROTO_DIR=...
#         -DOUT_DIR=... -P check_rejects.cmake

# file, then the regular expressions its error output must each match,
# separated by |.
set(cases
  "bad/pinned_ids.proto|method id 9 .*qrpc\\.test\\.bad\\.Pins/Second.*qrpc\\.test\\.bad\\.Pins/First"
  "bad/hashed_id.proto|qrpc\\.test\\.bad\\.Hashed/Squatter \\(pinned\\).*qrpc\\.test\\.bad\\.Hashed/Natural"
  "bad/c_names.proto|qrpc_test_bad_Clash_Fetch_sync.*Clash/Fetch .*Clash/Fetch_sync"
  "bad/streaming_notify.proto|qrpc\\.test\\.bad\\.Streams/Feed: \\(qrpc\\.notify\\)"
  "bad/dgram_options.proto|qrpc\\.test\\.bad\\.Chan/Move: \\(qrpc\\.latest_only\\) applies only to \\(qrpc\\.datagram\\)"
  "bad/snapshot_options.proto|qrpc\\.test\\.bad\\.Snap/RingNotDgram: \\(qrpc\\.snapshot_ring\\) applies only to \\(qrpc\\.datagram\\)|\
qrpc\\.test\\.bad\\.Snap/KeyNotDgram: \\(qrpc\\.snapshot_key\\) applies only to \\(qrpc\\.datagram\\)|\
qrpc\\.test\\.bad\\.Snap/KeyAlone: \\(qrpc\\.snapshot_key\\) needs \\(qrpc\\.snapshot_ring\\)|\
qrpc\\.test\\.bad\\.Snap/KeyRingZero: \\(qrpc\\.snapshot_key\\) needs \\(qrpc\\.snapshot_ring\\)|\
qrpc\\.test\\.bad\\.Snap/BigRing: \\(qrpc\\.snapshot_ring\\) is 65. a channel keeps at most 64|\
qrpc\\.test\\.bad\\.Snap/NoDot: \\(qrpc\\.snapshot_key\\) \"ents\" is not FIELD\\.KEY|\
qrpc\\.test\\.bad\\.Snap/TwoDots: \\(qrpc\\.snapshot_key\\) \"ents\\.child\\.id\" is not FIELD\\.KEY|\
qrpc\\.test\\.bad\\.Snap/NoKeyName: \\(qrpc\\.snapshot_key\\) \"ents\\.\" is not FIELD\\.KEY|\
qrpc\\.test\\.bad\\.Snap/NoField: \\(qrpc\\.snapshot_key\\) \"missing\\.id\": field missing of qrpc\\.test\\.bad\\.W does not exist|\
qrpc\\.test\\.bad\\.Snap/NotRepeated: \\(qrpc\\.snapshot_key\\) \"one\\.id\": field one of qrpc\\.test\\.bad\\.W is not repeated|\
qrpc\\.test\\.bad\\.Snap/NotMessage: \\(qrpc\\.snapshot_key\\) \"nums\\.id\": field nums of qrpc\\.test\\.bad\\.W is not a message field|\
qrpc\\.test\\.bad\\.Snap/NoKey: \\(qrpc\\.snapshot_key\\) \"ents\\.missing\": field missing of qrpc\\.test\\.bad\\.Ent does not exist|\
qrpc\\.test\\.bad\\.Snap/KeyRepeated: \\(qrpc\\.snapshot_key\\) \"ents\\.tags\": field tags of qrpc\\.test\\.bad\\.Ent is repeated|\
qrpc\\.test\\.bad\\.Snap/KeyString: \\(qrpc\\.snapshot_key\\) \"ents\\.name\": field name of qrpc\\.test\\.bad\\.Ent is a string field|\
qrpc\\.test\\.bad\\.Snap/KeyFixed: \\(qrpc\\.snapshot_key\\) \"ents\\.f\": field f of qrpc\\.test\\.bad\\.Ent is a fixed32 field|\
qrpc\\.test\\.bad\\.Snap/KeyMessage: \\(qrpc\\.snapshot_key\\) \"ents\\.child\": field child of qrpc\\.test\\.bad\\.Ent is a message field")

file(MAKE_DIRECTORY ${OUT_DIR})
set(failures 0)
foreach(case ${cases})
  string(REPLACE "|" ";" parts "${case}")
  list(GET parts 0 file)
  list(SUBLIST parts 1 -1 patterns)
  execute_process(
    COMMAND ${PROTOC} -I${PROTO_DIR} -I${QRPC_PROTO_DIR}
            --plugin=protoc-gen-qrpc=${PLUGIN} --qrpc_out=${OUT_DIR} ${file}
    RESULT_VARIABLE rc
    OUTPUT_VARIABLE out
    ERROR_VARIABLE err
    TIMEOUT 30)
  string(REPLACE "\n" " " text "${out}${err}")
  if(rc EQUAL 0)
    message(SEND_ERROR "${file}: protoc succeeded; it must fail")
    math(EXPR failures "${failures} + 1")
  else()
    set(missed "")
    foreach(pattern ${patterns})
      if(NOT text MATCHES "${pattern}")
        list(APPEND missed "${pattern}")
      endif()
    endforeach()
    if(missed)
      message(SEND_ERROR "${file}: protoc failed (${rc}) but its message "
        "does not match '${missed}':\n${out}${err}")
      math(EXPR failures "${failures} + 1")
    else()
      message(STATUS "ok: ${file} refused: ${err}")
    endif()
  endif()
endforeach()
# Nothing may have been generated for any of them.
file(GLOB_RECURSE stray ${OUT_DIR}/*.qrpc.*)
if(stray)
  message(SEND_ERROR "files were generated for refused input: ${stray}")
  math(EXPR failures "${failures} + 1")
endif()
if(failures GREATER 0)
  message(FATAL_ERROR "${failures} check(s) failed")
endif()
