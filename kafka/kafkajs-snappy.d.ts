declare module "kafkajs-snappy" {
  import type { Codec } from "kafkajs";

  const createSnappyCodec: () => ReturnType<Codec>;
  export default createSnappyCodec;
}
