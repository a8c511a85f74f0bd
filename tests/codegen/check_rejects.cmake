# Runs protoc with protoc-gen-qrpc on each .proto the generator must refuse
# and checks that it fails with a message naming what is wrong.
#
#   cmake -DPROTOC=... -DPLUGIN=... -DPROTO_DIR=... -DQRPC_PROTO_DIR=...
#         -DOUT_DIR=... -P check_rejects.cmake

# file, then the regular expressions its error output must match.
set(cases
  "bad/pinned_ids.proto|method id 9 .*qrpc\\.test\\.bad\\.Pins/Second.*qrpc\\.test\\.bad\\.Pins/First"
  "bad/hashed_id.proto|qrpc\\.test\\.bad\\.Hashed/Squatter \\(pinned\\).*qrpc\\.test\\.bad\\.Hashed/Natural"
  "bad/c_names.proto|qrpc_test_bad_Clash_Fetch_sync.*Clash/Fetch .*Clash/Fetch_sync"
  "bad/streaming_notify.proto|qrpc\\.test\\.bad\\.Streams/Feed: \\(qrpc\\.notify\\)"
  "bad/dgram_options.proto|qrpc\\.test\\.bad\\.Chan/Move: \\(qrpc\\.latest_only\\) applies only to \\(qrpc\\.datagram\\)")

file(MAKE_DIRECTORY ${OUT_DIR})
set(failures 0)
foreach(case ${cases})
  string(REPLACE "|" ";" parts "${case}")
  list(GET parts 0 file)
  list(GET parts 1 pattern)
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
  elseif(NOT text MATCHES "${pattern}")
    message(SEND_ERROR "${file}: protoc failed (${rc}) but its message "
      "does not match '${pattern}':\n${out}${err}")
    math(EXPR failures "${failures} + 1")
  else()
    message(STATUS "ok: ${file} refused: ${err}")
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
