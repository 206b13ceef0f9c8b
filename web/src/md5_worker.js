// Hashes weight shards off the page's thread (weights.js): a message holds one shard's bytes
// (an ArrayBuffer, transferred); the reply holds its md5 and the same bytes, transferred back.
importScripts("../vendor/spark-md5.js");

onmessage = ({ data: { buffer } }) => {
  postMessage({ md5: SparkMD5.ArrayBuffer.hash(buffer), buffer }, [buffer]);
};
